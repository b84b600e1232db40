"""Why clusters of the real-film benchmark are never marked: not proposed, or proposed and scored out.

``bench_real_film.py`` reports the share of inserted clusters marked at all ("by any mark":
a merged lesion scoring at least the evaluation floor hits the cluster). About 12% of the
calibrated clusters are never marked by model 0.5.0, so no threshold or re-ranking reaches them.
This diagnostic runs the same deliveries (same films, conditions, seeds and clusters) and
records, through forward hooks on the detector (the analysis itself is unchanged), what the
network did at each cluster before the stages that can drop it:

* ``proposed``: one of the region proposal network's boxes (300 per tile after its NMS) hits it;
* ``roi``: the best lesion score (1 - P(background)) the box head gives any proposal whose
  regressed box hits it, before the head's 0.01 floor, its NMS and its 100-box cap;
* ``tile``: the best score among the tile's final outputs hitting it (after the head's NMS);
* ``marked``: the best calibrated score of a merged lesion hitting it (the benchmark's number).

Each unmarked cluster gets the first stage that lost it: ``not proposed`` (no proposal hits
it, nor does any proposal's regressed box); ``regressed off`` (a proposal hits it, but the
head's box regression moved every such box off it); ``head < 0.01``; ``head below floor``
(scored, but below the raw score whose calibrated value is the evaluation floor); ``lost in
tile NMS`` (scored above it, but not among the tile's outputs: the head's NMS, its small-box
removal or its 100-box cap); ``lost in merging`` (a tile output above the floor that merging
across tiles dropped). "Hits" is the evaluation's rule (:func:`MicrocalcAI.core.boxes.hit_matrix`)
in canonical (model-grid) coordinates.

    python benchmarks/diagnose_unmarked_clusters.py --repeats 4 --out out/diagnose_unmarked   # ~10 min on 2 cores

Writes ``unmarked.json`` (one record per cluster) and ``unmarked.md`` (counts by stage, by
condition and by morphology).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_real_film as bench  # noqa: E402  (the benchmark's deliveries, one definition)

from MicrocalcAI.core.boxes import box_intersection, hit_matrix  # noqa: E402
from MicrocalcAI.core.detect.manifest import MERGE_FLOOR  # noqa: E402
from MicrocalcAI.core.detect.tiling import tile_origins  # noqa: E402
from MicrocalcAI.core.findings.lesions import ClusterRule  # noqa: E402
from MicrocalcAI.core.pipeline import Analyzer  # noqa: E402
from MicrocalcAI.core.read import read_mammogram  # noqa: E402
from MicrocalcAI.evaluation.curves import EVAL_MIN_SCORE  # noqa: E402

#: The stages, in pipeline order, at which an unmarked cluster can be lost.
STAGES = ("not proposed", "regressed off", "head < 0.01", "head below floor", "lost in tile NMS", "lost in merging")


class HeadView(NamedTuple):
    """Every proposal of an image's tiles, in image coordinates, and the tiles' final outputs."""

    proposals: np.ndarray  # (N, 4) the RPN's boxes
    regressed: np.ndarray  # (N, 4) their lesion boxes as the head regresses and clips them
    scores: np.ndarray  # (N,) the head's lesion score, 1 - P(background)
    p_malignant: np.ndarray  # (N,) the head's P(malignant) / (P(benign) + P(malignant))
    outputs: np.ndarray  # (K, 5) the tiles' final boxes and scores (after the head's NMS and cap)


class RawOutputs:
    """Forward hooks that keep, per tile, the RPN's proposals and the box head's outputs."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.proposals: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.regression: list[torch.Tensor] = []
        self.tile_outputs: list[dict[str, np.ndarray]] = []
        self._handles = [
            model.rpn.register_forward_hook(self._on_rpn),
            model.roi_heads.box_predictor.register_forward_hook(self._on_predictor),
            model.roi_heads.register_forward_hook(self._on_heads),
        ]

    def _on_rpn(self, _module: Any, _inputs: Any, output: Any) -> None:
        self.proposals.extend(p.detach().cpu() for p in output[0])

    def _on_predictor(self, _module: Any, _inputs: Any, output: Any) -> None:
        self.logits.append(output[0].detach().cpu())
        self.regression.append(output[1].detach().cpu())

    def _on_heads(self, _module: Any, _inputs: Any, output: Any) -> None:
        for res in output[0]:
            self.tile_outputs.append({k: res[k].detach().cpu().numpy() for k in ("boxes", "scores")})

    def clear(self) -> None:
        self.proposals, self.logits, self.regression, self.tile_outputs = [], [], [], []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def per_tile(self, origins: Sequence[tuple[int, int]], tile: int) -> HeadView:
        """What the head made of every proposal of every tile, in image coordinates."""
        if len(self.proposals) != len(origins) or len(self.tile_outputs) != len(origins):
            raise RuntimeError(f"hooks saw {len(self.proposals)} tiles, the image has {len(origins)}")
        per_image = self.model.roi_heads.lesion_per_proposal(
            torch.cat(self.logits), torch.cat(self.regression), self.proposals, [(tile, tile)] * len(origins)
        )
        shift = [np.array([c, r, c, r], dtype=np.float64) for r, c in origins]
        proposals = np.concatenate([p.numpy().astype(np.float64) + d for p, d in zip(self.proposals, shift)])
        regressed = np.concatenate([b.numpy().astype(np.float64) + d for (b, *_), d in zip(per_image, shift)])
        scores = np.concatenate([s.numpy().astype(np.float64) for _, s, *_ in per_image])
        p_malignant = np.concatenate([p.numpy().astype(np.float64) for *_, p in per_image])
        outputs = [
            np.column_stack([out["boxes"].reshape(-1, 4) + d, out["scores"].reshape(-1)])
            for out, d in zip(self.tile_outputs, shift)
        ]
        return HeadView(
            proposals.reshape(-1, 4),
            regressed.reshape(-1, 4),
            scores,
            p_malignant,
            np.concatenate(outputs).reshape(-1, 5),
        )


def raw_floor(analyzer: Analyzer) -> float:
    """The raw score whose calibrated value is the evaluation floor (the merge floor when higher)."""
    cal = analyzer.spec.calibration
    if cal is None or cal.is_identity:
        return max(EVAL_MIN_SCORE, MERGE_FLOOR)
    return max(float(cal.raw_score(EVAL_MIN_SCORE)), MERGE_FLOOR)


def best(scores: np.ndarray, hits: np.ndarray) -> Optional[float]:
    """Highest score among the hitting rows, None when none hits."""
    return float(scores[hits].max()) if hits.any() else None


def _covering(boxes: np.ndarray, truth: np.ndarray, share: float = 0.5) -> np.ndarray:
    """(M, G) bool: box m covers at least ``share`` of truth box g's area."""
    area = np.prod(truth[:, 2:] - truth[:, :2], axis=1)
    return box_intersection(boxes, truth) >= share * np.maximum(area, 1e-9)[None, :]


def stage_lost(record: dict[str, Any], floor: float) -> Optional[str]:
    """The first stage that lost an unmarked cluster (None: marked)."""
    if record["marked"] is not None and record["marked"] >= EVAL_MIN_SCORE:
        return None
    roi = record["roi"]
    if roi is None:  # no lesion box of the head hits it
        return STAGES[0] if not record["proposed"] else STAGES[1]
    if roi < 0.01:
        return STAGES[2]
    if roi < floor:
        return STAGES[3]
    if record["tile"] is None or record["tile"] < floor:
        return STAGES[4]
    return STAGES[5]


def diagnose_image(
    analyzer: Analyzer,
    raw: RawOutputs,
    film: bench.Film,
    condition: bench.Condition,
    seed: int,
    clusters: int,
    population: bench.ClusterPopulation,
) -> list[dict[str, Any]]:
    """One delivery: a record per inserted cluster of ``population``."""
    image, truth, details = bench.deliver(film, condition, seed, clusters, population)
    mammogram = read_mammogram(
        image, spacing_mm=condition.stated_spacing_mm, laterality=film.laterality, view=film.view
    )
    prepared = analyzer.prepare(mammogram)
    canonical = prepared.canonical
    origins = tile_origins(canonical.image.shape, canonical.mask, analyzer.spec.tile_size, analyzer.spec.tile_overlap)
    raw.clear()
    findings, _ = analyzer.analyse_prepared(prepared, name=film.name)
    view = raw.per_tile(origins, analyzer.spec.tile_size)
    proposals, regressed, head_scores, tile_out = view.proposals, view.regressed, view.scores, view.outputs
    truth_c = canonical.transform.to_canonical_boxes(truth) if truth.size else truth.reshape(0, 4)
    lesion_boxes = np.array([lesion.box_px for lesion in findings.lesions]).reshape(-1, 4)
    lesion_scores = np.array([lesion.score for lesion in findings.lesions])
    marked_hits = hit_matrix(lesion_boxes, truth)
    proposal_hits = hit_matrix(proposals, truth_c)
    regressed_hits = hit_matrix(regressed, truth_c)
    tile_hits = hit_matrix(tile_out[:, :4], truth_c)
    covering = _covering(lesion_boxes, truth) & ~marked_hits  # (M, G): covers most of g, misses it
    touching = _covering(lesion_boxes, truth, 0.2)
    records = []
    for g, detail in enumerate(details):
        cover = np.flatnonzero(covering[:, g])
        top = cover[np.argmax(lesion_scores[cover])] if cover.size else None
        records.append(
            {
                "film": film.name,
                "condition": condition.label,
                "spacing_mm": condition.spacing_mm,
                "seed": seed,
                **detail,
                "cluster_px": float(np.sqrt(np.prod(truth_c[g, 2:] - truth_c[g, :2]))),
                "proposed": int(proposal_hits[:, g].sum()),
                "roi": best(head_scores, regressed_hits[:, g]),
                "tile": best(tile_out[:, 4], tile_hits[:, g]),
                "marked": best(lesion_scores, marked_hits[:, g]),
                # The best lesion that covers the cluster without finding it (a larger box):
                # its score and how many other inserted clusters it also reaches.
                "covered_by": None if top is None else float(lesion_scores[top]),
                "covering_reaches_others": None if top is None else int(touching[top].sum() - touching[top, g]),
            }
        )
    return records


def _table(title: str, groups: dict[str, Counter], totals: Counter) -> list[str]:
    lines = [
        f"### {title}",
        "",
        "| | clusters | marked | " + " | ".join(STAGES) + " |",
        "|---|" + "---|" * (len(STAGES) + 2),
    ]
    for key in sorted(groups):
        counts, n = groups[key], totals[key]
        cells = [str(counts.get(stage, 0)) for stage in STAGES]
        lines.append(f"| {key} | {n} | {counts.get('marked', 0)} | " + " | ".join(cells) + " |")
    return lines + [""]


def report(records: list[dict[str, Any]], floor: float, model: str) -> str:
    """Markdown tables: where unmarked clusters were lost, overall and by condition and morphology."""
    overall: dict[str, Counter] = {"all": Counter()}
    by_condition: dict[str, Counter] = {}
    by_morphology: dict[str, Counter] = {}
    totals: Counter = Counter()
    for rec in records:
        stage = rec["stage"] or "marked"
        for groups, key in ((overall, "all"), (by_condition, rec["condition"]), (by_morphology, rec["morphology"])):
            groups.setdefault(key, Counter())[stage] += 1
            totals[key] += 1
    lines = [
        f"## Unmarked clusters of the real-film benchmark: {model}",
        "",
        f"Evaluation floor {EVAL_MIN_SCORE:g} calibrated = raw {floor:.3f}; {len(records)} clusters.",
        "",
    ]
    lines += _table("All deliveries", overall, totals)
    lines += _table("By condition", by_condition, totals)
    lines += _table("By morphology", by_morphology, totals)
    unmarked = [r for r in records if r["stage"]]
    if unmarked:
        roi = [r["roi"] or 0.0 for r in unmarked]
        lines.append(
            f"Best head score at the unmarked clusters: median {np.median(roi):.3f}, "
            f"p90 {np.percentile(roi, 90):.3f}; marked clusters' best calibrated score median "
            f"{np.median([r['marked'] for r in records if not r['stage']]):.3f}."
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model name or manifest/weights path (default: bundled)")
    parser.add_argument("--out", type=Path, default=Path("out/diagnose_unmarked"))
    parser.add_argument("--repeats", type=int, default=1, help="deliveries of every film with other cluster seeds")
    parser.add_argument(
        "--clusters", type=int, default=bench.DEFAULT_CLUSTERS_PER_FILM, help="clusters inserted per film"
    )
    parser.add_argument("--max-films", type=int, default=None, help="only the first N held-out films (smoke runs)")
    parser.add_argument("--spacings", type=float, nargs="+", default=list(bench.DEFAULT_SPACINGS_MM))
    parser.add_argument(
        "--blurs", type=float, nargs="+", default=list(bench.DEFAULT_BLURS_MM), help="added blur sigmas (mm)"
    )
    bench.add_distributions_option(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.clusters < 1:
        parser.error("--repeats and --clusters must be at least 1")
    population = bench.ClusterPopulation(distributions=bench.distributions_chosen(args.distributions))

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    analyzer = Analyzer(args.model, device="cpu", score_threshold=EVAL_MIN_SCORE)
    analyzer.cluster_rule = ClusterRule(min_specks=0)  # the benchmark's any-mark: rule off
    upsampling = analyzer.upsampling or bench._default_upsampling()
    conditions = bench.default_conditions(upsampling, args.spacings, args.blurs)
    floor = raw_floor(analyzer)
    films = bench.load_held_out_films()[: args.max_films]
    raw = RawOutputs(analyzer.model)
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        for condition in conditions:
            analyzer.upsampling = condition.upsampling
            for repeat in range(args.repeats):
                for index, film in enumerate(films):
                    seed = bench.delivery_seed(index, condition, repeat)
                    records += diagnose_image(analyzer, raw, film, condition, seed, args.clusters, population)
            done = [r for r in records if r["condition"] == condition.label]
            marked = sum(r["marked"] is not None and r["marked"] >= EVAL_MIN_SCORE for r in done)
            print(f"{condition.label}: {marked}/{len(done)} marked ({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        raw.remove()
    for rec in records:
        rec["stage"] = stage_lost(rec, floor)
    model = f"{analyzer.spec.name} {analyzer.spec.version}"
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"model": model, "raw_floor": floor, "repeats": args.repeats, "records": records}
    (args.out / "unmarked.json").write_text(json.dumps(payload, indent=1))
    text = report(records, floor, model)
    (args.out / "unmarked.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
