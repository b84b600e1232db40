"""Does the box head's feature vector know more about benign vs malignant than p_malignant says?

On the real-film benchmark's calibrated clusters (``bench_real_film.py``: faint, blurred,
half benign punctate, half malignant of biopsied morphologies) the detector's p_malignant
separates benign from malignant found clusters with an AUC of about 0.73, where it reaches
0.99 / 0.97 on the two simulated film test sets. If the 1024-value representation the box head computes
for each proposal still held the difference, a malignancy classifier re-fitted on those frozen
features (a new last layer, no retraining of the detector, detection unchanged) would close
part of the gap. This probe measures that ceiling before anyone builds it:

* it runs the benchmark's deliveries (same films, rows, seeds and clusters) through the real
  pipeline with forward hooks (as ``diagnose_unmarked_clusters.py``) and keeps, per inserted
  cluster, the box-head features and p_malignant of the highest-scoring proposal whose lesion
  box finds it (the evaluation's hit rule, in model-grid coordinates) with a score at least the
  evaluation floor: usually the proposal a reported lesion's p_malignant comes from (the raw
  one: a reported lesion's is temperature-calibrated, which changes neither rank nor class);
* it compares the head's own p_malignant (softmax of the two foreground logits) with a
  standardised logistic regression on the features, cross-validated by film (fit on the other
  held-out films' clusters, scored on this film's): an *in-domain* re-fit, an optimistic ceiling
  for any re-fit trained elsewhere;
* ``--train-coco`` also fits the regression on a labelled COCO set (e.g. simulated film
  images) and scores the benchmark's clusters with it: what a re-fit trained on simulated
  data would do;
* the same regressions on *cluster-level cues* of the reported lesion that finds each
  cluster (:func:`lesion_cues`: box sides, speck count and density, speck sizes and their
  variation, spacing and spread of the speck centres, the detector's score), alone and beside
  the head's logit: what BI-RADS reads beside a speck's shape, available to the engine without
  retraining the detector, scored on the clusters a reported lesion finds. Clusters of grouped
  distribution are also scored apart (under ``--distributions all`` most benign clusters are
  regional or diffuse spreads, which a cue can tell by size alone).

    python benchmarks/probe_malignancy_features.py --repeats 4 --out out/probe_malignancy   # 7-12 min on 2 cores, by load
    python benchmarks/probe_malignancy_features.py --train-coco work_dirs/film/sim_val/annotations.json   # + ~1.5 s/image

Writes ``probe.json``, ``probe.md`` (AUC and accuracy per row, overall and on grouped clusters;
per morphology and blur band for the head and the cue re-fits beside it) and ``samples.npz``
under ``--out``.
The numbers are developer proxies on simulated clusters in real films, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_real_film as bench  # noqa: E402  (the benchmark's deliveries, one definition)
from diagnose_unmarked_clusters import RawOutputs, raw_floor  # noqa: E402  (the same hooks)

from MicrocalcAI.core.boxes import hit_matrix  # noqa: E402
from MicrocalcAI.core.detect.tiling import tile_origins  # noqa: E402
from MicrocalcAI.core.findings.lesions import ClusterRule, densest_speck_count, speck_positions_mm  # noqa: E402
from MicrocalcAI.core.pipeline import Analyzer  # noqa: E402
from MicrocalcAI.core.read import read_mammogram  # noqa: E402
from MicrocalcAI.core.records import Lesion  # noqa: E402
from MicrocalcAI.datasets.coco import MALIGNANT, parse_coco  # noqa: E402
from MicrocalcAI.evaluation.curves import EVAL_MIN_SCORE, roc_auc  # noqa: E402
from MicrocalcAI.evaluation.matching import best_finders  # noqa: E402

#: Inverse regularisation strengths tried for the regression; every one is reported (no
#: selection on the data it is scored on).
DEFAULT_C = (0.001, 0.01, 0.1)


class FeatureHooks(RawOutputs):
    """:class:`RawOutputs` plus the box head's per-proposal representation."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.features: list[torch.Tensor] = []
        self._handles.append(model.roi_heads.box_head.register_forward_hook(self._on_box_head))

    def _on_box_head(self, _module: Any, _inputs: Any, output: Any) -> None:
        self.features.append(output.detach().cpu())

    def clear(self) -> None:
        super().clear()
        self.features = []


#: Cluster-level cues of the reported lesion that finds a cluster, in the order of
#: :func:`lesion_cues`' vector.
CUE_NAMES = (
    "log long side mm",
    "log short side mm",
    "log specks",
    "log specks per cm2 of box",
    "log densest specks in 1 cm2",
    "mean speck diameter mm",
    "speck diameter CV",
    "largest speck diameter mm",
    "log median nearest-neighbour mm",
    "log speck spread mm",
    "detector score logit",
)


def lesion_cues(lesion: Lesion, spacing_mm: tuple[float, float]) -> np.ndarray:
    """What a reader weighs beside a speck's look, from one reported lesion and its segmented specks.

    BI-RADS (5th ed.) reads a cluster's class from the number, spread and distribution of its
    calcifications and from how much they vary ("fine pleomorphic: varying sizes and shapes";
    punctate: round, similar), which the box head, seeing each proposal through one pooled
    7x7 crop, may not weigh. The vector (names: :data:`CUE_NAMES`) uses only what a reported
    lesion carries (box, score, specks from ``findings.specks``), so that a classifier on it
    could run in the engine unchanged. ``spacing_mm`` is (row, column), as the pipeline used.
    """
    x0, y0, x1, y1 = lesion.box_mm
    long_mm, short_mm = max(x1 - x0, y1 - y0, 1e-3), max(min(x1 - x0, y1 - y0), 1e-3)
    specks = lesion.specks
    n = len(specks)
    xy = speck_positions_mm(specks, spacing_mm)
    diameters = np.array([s.diameter_mm for s in specks], dtype=np.float64)
    if n >= 2:
        distances = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(axis=2))
        np.fill_diagonal(distances, np.inf)
        nearest = float(np.median(distances.min(axis=1)))
        spread = float(np.sqrt(((xy - xy.mean(axis=0)) ** 2).sum(axis=1).mean()))
        variation = float(diameters.std() / diameters.mean())
    else:  # one speck or none: no spacing or variation to read; the box stands in for the spread
        nearest, spread, variation = long_mm, long_mm / 2, 0.0
    return np.array(
        [
            math.log(long_mm),
            math.log(short_mm),
            math.log1p(n),
            math.log1p(n / (long_mm * short_mm / 100.0)),
            math.log1p(densest_speck_count(specks, spacing_mm, bench.RULE_AREA_MM2)),
            float(diameters.mean()) if n else 0.0,
            variation,
            float(diameters.max()) if n else 0.0,
            math.log(max(nearest, 1e-3)),
            math.log(max(spread, 1e-3)),
            float(logit(np.array([lesion.score]))[0]),
        ]
    )


def finding_lesion_cues(
    lesions: Sequence[Lesion], spacing_mm: tuple[float, float], truth: np.ndarray
) -> list[Optional[np.ndarray]]:
    """Per truth box (stored pixels): :func:`lesion_cues` of the highest-scoring reported lesion
    that finds it (the evaluation's hit rule and match); None when no reported lesion does."""
    if not lesions or not truth.size:
        return [None] * len(truth)
    boxes = np.array([lesion.box_px for lesion in lesions], dtype=np.float64)
    scores = np.array([lesion.score for lesion in lesions], dtype=np.float64)
    best = best_finders(hit_matrix(boxes, truth), scores)
    return [None if i < 0 else lesion_cues(lesions[int(i)], spacing_mm) for i in best]


class Found(NamedTuple):
    """What the probe keeps of one cluster that a proposal finds at the floor."""

    features: np.ndarray  # the best proposal's box-head representation
    p_malignant: float  # the head's raw p_malignant for that proposal
    cues: Optional[np.ndarray]  # :func:`lesion_cues` of the reported lesion that finds it (None: none does)


@dataclass
class ClusterSamples:
    """One row per found cluster: its best proposal's features and the head's p_malignant."""

    features: list[np.ndarray] = field(default_factory=list)
    p_malignant: list[float] = field(default_factory=list)  # the head's
    malignant: list[bool] = field(default_factory=list)
    group: list[int] = field(default_factory=list)  # film index (cross-validation folds)
    row: list[int] = field(default_factory=list)  # condition index
    morphology: list[str] = field(default_factory=list)
    blur_mm: list[float] = field(default_factory=list)  # the cluster's own blur sigma (nan: unknown)
    distribution: list[str] = field(default_factory=list)  # BI-RADS distribution ("": unknown)
    cues: list[np.ndarray] = field(default_factory=list)  # lesion_cues (all nan: no reported lesion)

    def add(
        self,
        found: Found,
        malignant: bool,
        group: int,
        row: int = -1,
        morphology: str = "",
        blur_mm: float = float("nan"),
        distribution: str = "",
    ) -> None:
        """One found cluster, as :func:`best_proposals` returned it."""
        self.features.append(found.features)
        self.p_malignant.append(found.p_malignant)
        self.malignant.append(malignant)
        self.group.append(group)
        self.row.append(row)
        self.morphology.append(morphology)
        self.blur_mm.append(blur_mm)
        self.distribution.append(distribution)
        self.cues.append(np.full(len(CUE_NAMES), np.nan) if found.cues is None else found.cues)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "X": np.stack(self.features).astype(np.float64) if self.features else np.zeros((0, 0)),
            "logit": logit(np.array(self.p_malignant)),
            "y": np.array(self.malignant, dtype=bool),
            "group": np.array(self.group, dtype=np.int64),
            "row": np.array(self.row, dtype=np.int64),
            "morphology": np.array(self.morphology, dtype=object),
            "blur_mm": np.array(self.blur_mm, dtype=np.float64),
            "distribution": np.array(self.distribution, dtype=object),
            "cues": np.stack(self.cues) if self.cues else np.zeros((0, len(CUE_NAMES))),
        }


def best_finders_at_floor(
    regressed: np.ndarray, scores: np.ndarray, truth: np.ndarray, floor: float
) -> list[Optional[int]]:
    """Per truth box (same frame as ``regressed``): the index of the highest-scoring proposal
    whose lesion box finds it (the evaluation's hit rule and match,
    :func:`MicrocalcAI.evaluation.matching.best_finders`) with a score >= ``floor``; None when
    none does. Usually the proposal a reported lesion's (raw, uncalibrated) p_malignant comes
    from: merging may hand a whole lesion a fragment's."""
    best = best_finders(hit_matrix(regressed, truth), scores, scores >= floor)
    return [int(i) if i >= 0 else None for i in best]


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), finite for p in [0, 1]: a class decision value on the re-fits' scale."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(q / (1 - q))


def best_proposals(
    analyzer: Analyzer, hooks: FeatureHooks, mammogram: Any, truth: np.ndarray, floor: float, name: str
) -> list[Optional[Found]]:
    """Per truth box (stored pixels): what the probe keeps of :func:`best_finders_at_floor`'s
    proposal and of the reported lesion that finds it; None when no proposal finds it at the floor."""
    prepared = analyzer.prepare(mammogram)
    canonical = prepared.canonical
    origins = tile_origins(canonical.image.shape, canonical.mask, analyzer.spec.tile_size, analyzer.spec.tile_overlap)
    hooks.clear()
    findings, _ = analyzer.analyse_prepared(prepared, name=name)
    view = hooks.per_tile(origins, analyzer.spec.tile_size)
    features = torch.cat(hooks.features).numpy()
    if len(features) != len(view.scores):
        raise RuntimeError(f"hooks saw {len(features)} feature rows and {len(view.scores)} proposals")
    truth_c = canonical.transform.to_canonical_boxes(truth) if truth.size else truth.reshape(0, 4)
    cues = finding_lesion_cues(findings.lesions, findings.spacing_mm, truth.reshape(-1, 4))
    return [
        None if i is None else Found(features[i], float(view.p_malignant[i]), cue)
        for i, cue in zip(best_finders_at_floor(view.regressed, view.scores, truth_c, floor), cues)
    ]


def collect_benchmark(
    analyzer: Analyzer,
    hooks: FeatureHooks,
    conditions: Sequence[bench.Condition],
    repeats: int,
    floor: float,
    population: bench.ClusterPopulation,
) -> ClusterSamples:
    """The benchmark's deliveries of ``population``'s clusters under ``conditions``, ``repeats``
    cluster seeds per film."""
    films = bench.load_held_out_films()
    samples = ClusterSamples()
    started = time.perf_counter()
    for row, condition in enumerate(conditions):
        analyzer.upsampling = condition.upsampling
        for repeat in range(repeats):
            for index, film in enumerate(films):
                seed = bench.delivery_seed(index, condition, repeat)
                image, truth, details = bench.deliver(
                    film, condition, seed, bench.DEFAULT_CLUSTERS_PER_FILM, population
                )
                mammogram = read_mammogram(
                    image, spacing_mm=condition.stated_spacing_mm, laterality=film.laterality, view=film.view
                )
                for detail, found in zip(details, best_proposals(analyzer, hooks, mammogram, truth, floor, film.name)):
                    if found is not None:
                        malignant = detail["category"] == "malignant"
                        morphology, blur = str(detail["morphology"]), float(detail["blur_sigma_mm"])
                        samples.add(found, malignant, index, row, morphology, blur, str(detail["distribution"]))
        print(
            f"{condition.label}: {len(samples.malignant)} found clusters ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    return samples


def collect_coco(analyzer: Analyzer, hooks: FeatureHooks, coco: Path, floor: float) -> ClusterSamples:
    """Every lesion of a labelled COCO set that a proposal finds."""
    samples = ClusterSamples()
    for index, entry in enumerate(parse_coco(coco)):
        mammogram = read_mammogram(str(entry.path), spacing_mm=entry.spacing_mm)
        found_all = best_proposals(analyzer, hooks, mammogram, entry.boxes_stored, floor, entry.path.stem)
        for label, found in zip(entry.labels, found_all):
            if found is not None:
                samples.add(found, bool(label == MALIGNANT), index)
    return samples


def _regression(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))


def cross_validated_logits(X: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float) -> np.ndarray:
    """Leave-one-group-out decision values of the regression (each group scored by a fit on the
    others); nan for a group whose training folds hold only one class."""
    out = np.full(len(y), np.nan)
    for g in np.unique(groups):
        train, test = groups != g, groups == g
        if len(np.unique(y[train])) < 2:
            continue
        out[test] = _regression(c).fit(X[train], y[train]).decision_function(X[test])
    return out


def with_lesion(data: dict[str, np.ndarray]) -> np.ndarray:
    """Which samples' cluster a reported lesion finds (finite cues): the ones a cue re-fit can score."""
    return np.isfinite(data["cues"]).all(axis=1)


def cue_inputs(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs of the cue re-fits: the cues alone, and the head's logit beside them."""
    return {"cues": data["cues"], "head logit + cues": np.column_stack([data["logit"], data["cues"]])}


def _accuracy(value: np.ndarray, y: np.ndarray) -> float:
    ok = ~np.isnan(value)
    return float(((value[ok] >= 0) == y[ok]).mean()) if ok.any() else float("nan")


def _auc(value: np.ndarray, y: np.ndarray) -> float:
    ok = ~np.isnan(value)
    return roc_auc(value[ok], y[ok])


def compare(data: dict[str, np.ndarray], refits: dict[str, np.ndarray]) -> dict[str, Any]:
    """AUC and accuracy (malignant when the decision value >= 0, i.e. p >= 0.5, the label rule)
    of the head and of each re-fit, overall and per row."""
    y, rows = data["y"], data["row"]
    scorers = {"head": data["logit"], **refits}
    distributions = data.get("distribution", np.array([], dtype=object))
    result: dict[str, Any] = {"n": int(len(y)), "malignant": int(y.sum())}
    for name, value in scorers.items():
        scored = ~np.isnan(value)
        result[name] = {"auc": _auc(value, y), "accuracy": _accuracy(value, y), "n": int(scored.sum())}
        result[name]["per_row"] = {
            int(r): {"auc": _auc(value[rows == r], y[rows == r]), "n": int((rows == r).sum())} for r in np.unique(rows)
        }
        if len(distributions) == len(y) and len(y):
            # grouped clusters apart: spreads (regional, diffuse; under --distributions all most
            # punctate clusters, read as benign on sight and not biopsied) can be told by their
            # size alone, grouped ones cannot
            grouped = distributions == "grouped"
            result[name]["grouped"] = {
                "auc": _auc(value[grouped], y[grouped]),
                "accuracy": _accuracy(value[grouped], y[grouped]),
                "n": int((grouped & scored).sum()),
            }
    return result


#: Bands of the inserted clusters' own blur (Gaussian sigma, mm; the benchmark draws 0.07-0.15).
BLUR_BANDS_MM = (
    (bench.REAL_BLUR_SIGMA_MM[0], 0.095),
    (0.095, 0.12),
    (0.12, bench.REAL_BLUR_SIGMA_MM[1]),
)


def by_morphology_and_blur(data: dict[str, np.ndarray], value: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Does a decision value (default: the head's logit) follow morphology or sharpness (issue 10, item 5)?

    Per malignant morphology, the AUC of the value against every benign cluster; per band of
    the cluster's own blur, the share of benign and of malignant clusters called malignant
    (value >= 0, i.e. p >= 0.5). A classifier that follows morphology calls about as many
    benign clusters malignant in every band.
    """
    value = data["logit"] if value is None else value
    scored = ~np.isnan(value)  # a re-fit leaves nan where no fold could be fitted
    y, morph, blur, value = data["y"][scored], data["morphology"][scored], data["blur_mm"][scored], value[scored]
    benign = ~y
    by_morphology = {
        str(m): {
            "auc_vs_benign": roc_auc(value[(morph == m) | benign], y[(morph == m) | benign]),
            "n": int(((morph == m) & y).sum()),
        }
        for m in sorted(set(morph[y].tolist()))
    }
    by_blur = {}
    for lo, hi in BLUR_BANDS_MM:
        band = (blur >= lo) & (blur < hi) if hi < BLUR_BANDS_MM[-1][1] else (blur >= lo) & (blur <= hi)
        by_blur[f"{lo:g}-{hi:g}"] = {
            name: {
                "called_malignant": float((value[band & cls] >= 0).mean()) if (band & cls).any() else float("nan"),
                "n": int((band & cls).sum()),
            }
            for name, cls in (("benign", benign), ("malignant", y))
        }
    return {"by_morphology": by_morphology, "by_blur_mm": by_blur}


def markdown(result: dict[str, Any], labels: Sequence[str], model: str) -> str:
    scorers = [k for k in result if isinstance(result[k], dict) and "auc" in result[k]]
    grouped = bool(scorers) and all("grouped" in result[name] for name in scorers)
    extra = " AUC grouped (clusters) | accuracy grouped |" if grouped else ""
    lines = [
        f"Model: {model}. {result['n']} found clusters ({result['malignant']} malignant).",
        "",
        "| p_malignant from | clusters | AUC | accuracy |"
        + extra
        + " "
        + " | ".join(f"AUC row {i + 1}" for i in range(len(labels)))
        + " |",
        "|---" * (4 + len(labels) + (2 if grouped else 0)) + "|",
    ]
    for name in scorers:
        block = result[name]
        cells = [bench._fmt(block["per_row"].get(i, {}).get("auc")) for i in range(len(labels))]
        if grouped:
            g = block["grouped"]
            cells = [f"{bench._fmt(g['auc'])} ({g['n']})", bench._fmt(g["accuracy"])] + cells
        first = [name, str(block.get("n", result["n"])), bench._fmt(block["auc"]), bench._fmt(block["accuracy"])]
        lines.append("| " + " | ".join(first + cells) + " |")
    lines += ["", "Rows: " + "; ".join(f"{i + 1} {label}" for i, label in enumerate(labels))]
    if result.get("without_lesion"):
        lines += [f"Left out: {result['without_lesion']} clusters a proposal finds but no reported lesion does."]
    details: dict[str, Any] = result.get("detail", {})
    if details:
        names = list(details)
        morphologies = sorted({m for d in details.values() for m in d["by_morphology"]})
        lines += ["", "Each malignant morphology against every benign cluster (AUC; malignant clusters):", ""]
        lines += ["| morphology | clusters | " + " | ".join(names) + " |", "|---" * (2 + len(names)) + "|"]
        for m in morphologies:
            blocks = [details[name]["by_morphology"].get(m, {}) for name in names]
            n = next((b["n"] for b in blocks if b), 0)
            cells = [bench._fmt(b.get("auc_vs_benign")) for b in blocks]
            lines.append(f"| {m.replace('_', ' ')} | {n} | " + " | ".join(cells) + " |")
        lines += ["", "Called malignant, by the cluster's own blur (sigma, mm): benign / malignant clusters:", ""]
        lines += [
            "| blur | clusters (benign, malignant) | " + " | ".join(names) + " |",
            "|---" * (2 + len(names)) + "|",
        ]
        bands = list(details[names[0]]["by_blur_mm"])
        for band in bands:
            first = details[names[0]]["by_blur_mm"][band]
            cells = [
                "{} / {}".format(
                    bench._fmt(details[name]["by_blur_mm"][band]["benign"]["called_malignant"]),
                    bench._fmt(details[name]["by_blur_mm"][band]["malignant"]["called_malignant"]),
                )
                for name in names
            ]
            lines.append(f"| {band} | {first['benign']['n']}, {first['malignant']['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fit_and_score(
    data: dict[str, np.ndarray], train: Optional[dict[str, np.ndarray]], strengths: Sequence[float], train_name: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every re-fit's decision values on the benchmark's clusters: on the box head's features and
    on the cluster cues (alone and beside the head's logit), cross-validated over the films and,
    given ``train``, fitted on that labelled set. Returns them with the names whose detail
    (by morphology and blur) is worth a table: the head's and the cue re-fits beside it."""
    has = with_lesion(data)  # the box-head re-fits score every found cluster, the cue re-fits these
    y, groups = data["y"], data["group"]
    refits: dict[str, np.ndarray] = {"head, clusters with a lesion": np.where(has, data["logit"], np.nan)}
    for c in strengths:
        refits[f"box-head features, other films, C={c:g}"] = cross_validated_logits(data["X"], y, groups, c)
    inputs = cue_inputs(data)
    for what, X in inputs.items():
        for c in strengths:
            value = np.full(len(y), np.nan)
            value[has] = cross_validated_logits(X[has], y[has], groups[has], c)
            refits[f"{what}, other films, C={c:g}"] = value
    if train is not None and len(np.unique(train["y"])) < 2:
        print(f"--train-coco: the lesions found in {train_name} are of one class or none; no re-fit on it", flush=True)
    elif train is not None:
        for c in strengths:
            refits[f"box-head features, fit on {train_name}, C={c:g}"] = (
                _regression(c).fit(train["X"], train["y"]).decision_function(data["X"])
            )
        train_has = with_lesion(train)
        train_inputs = cue_inputs(train)
        for what, X in inputs.items():
            for c in strengths:
                fitted = _regression(c).fit(train_inputs[what][train_has], train["y"][train_has])
                value = np.full(len(y), np.nan)
                value[has] = fitted.decision_function(X[has])
                refits[f"{what}, fit on {train_name}, C={c:g}"] = value
    return refits, ["head", "head, clusters with a lesion"] + [n for n in refits if n.startswith("head logit + cues")]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model name or manifest/weights path (default: bundled)")
    parser.add_argument("--out", type=Path, default=Path("out/probe_malignancy"))
    parser.add_argument("--repeats", type=int, default=4, help="cluster seeds per film, as the benchmark's --repeats")
    parser.add_argument("--train-coco", type=Path, default=None, help="also fit the regression on this labelled set")
    parser.add_argument("--c", type=float, nargs="+", default=list(DEFAULT_C), help="regularisation strengths")
    bench.add_distributions_option(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.train_coco is not None and not args.train_coco.is_file():
        parser.error(f"--train-coco: no such file {args.train_coco}")

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    analyzer = Analyzer(args.model, device="cpu", score_threshold=EVAL_MIN_SCORE)
    analyzer.cluster_rule = ClusterRule(min_specks=0)
    floor = raw_floor(analyzer)
    default_upsampling = analyzer.upsampling
    conditions = bench.default_conditions(default_upsampling or bench._default_upsampling())
    hooks = FeatureHooks(analyzer.model)
    started = time.perf_counter()
    try:
        population = bench.ClusterPopulation(distributions=bench.distributions_chosen(args.distributions))
        data = collect_benchmark(analyzer, hooks, conditions, args.repeats, floor, population).arrays()
        analyzer.upsampling = default_upsampling  # the rows set their own; a COCO set reads as `detect` would
        train = collect_coco(analyzer, hooks, args.train_coco, floor).arrays() if args.train_coco else None
    finally:
        hooks.remove()
    refits, detailed = fit_and_score(data, train, args.c, args.train_coco.parent.name if args.train_coco else "")
    result = compare(data, refits)
    result["without_lesion"] = int((~with_lesion(data)).sum())
    result["detail"] = {
        name: by_morphology_and_blur(data, None if name == "head" else refits[name]) for name in detailed
    }
    labels = [c.label for c in conditions]
    model = f"{analyzer.spec.name} {analyzer.spec.version}"
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"model": model, "repeats": args.repeats, "seconds": round(time.perf_counter() - started, 1), **result}
    if train is not None:
        report["train"] = {"coco": str(args.train_coco), "n": int(len(train["y"])), "malignant": int(train["y"].sum())}
    (args.out / "probe.json").write_text(json.dumps(report, indent=2, default=float))
    table = markdown(result, labels, model)
    (args.out / "probe.md").write_text(table)
    np.savez_compressed(
        args.out / "samples.npz",
        **{k: v.astype(str) if v.dtype == object else v for k, v in data.items()},
        cue_names=np.array(CUE_NAMES),
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
