"""Which simulated lesions does a model find, against how conspicuous they are in the file?

Real film clusters sit at a peak contrast of 0.108 of the breast's grey range (issue 10). To
see where a model's sensitivity falls off, this measures every annotated lesion of a simulated
test set from the *written* pixels (quantisation, LUT and MONOCHROME1 inversion included) and
tabulates whether ``microcalcai evaluate`` found it:

* peak contrast: the brightest speck pixel minus a 2 mm median background, over the breast's
  p0.5-p99.5 grey range (the range ``bench_real_film.py`` scales its inserted clusters to);
* visible specks: specks whose peak is at least 3 (and 5) times the local noise, the robust
  sigma of the 3x3 median-filter residual around the lesion;
* found: the ``found`` flag of the lesion in the evaluation's ``metrics.json`` (at the model's
  threshold), matched by image and box.

    microcalcai evaluate work_dirs/film/sim_test/annotations.json --out out/eval_film
    python benchmarks/bench_found_by_contrast.py work_dirs/film/sim_test/annotations.json out/eval_film/metrics.json
    python benchmarks/bench_found_by_contrast.py ... --json out/found_by_contrast.json

A measurement tool, not a test: the bins and figures are read by a developer (docs/real-film.md
section 7).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MicrocalcAI.core.read import read_mammogram  # noqa: E402
from MicrocalcAI.core.standardise import NormaliseConfig, breast_grey_range, breast_mask, monochrome2_intensity  # noqa: E402
from MicrocalcAI.datasets.coco import parse_coco  # noqa: E402
from MicrocalcAI.evaluation.matching import truth_from_entry  # noqa: E402
from MicrocalcAI.simulation.writers import coco_rle_to_mask  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speck_contrast import above_local_background  # noqa: E402  (one definition of peak contrast)

#: Bin edges of the tables (peak contrast over the grey range; visible specks per lesion).
CONTRAST_BINS = (0.0, 0.05, 0.08, 0.11, 0.15, 0.25, float("inf"))
SPECK_BINS = (0, 1, 3, 5, 10, 10**6)


def lesion_visibility(
    intensity: np.ndarray, speck_mask: np.ndarray, spacing_mm: float, grey_range: float
) -> dict[str, Any]:
    """Peak contrast and visible-speck counts of one lesion, from a window 3 mm around it."""
    rows, cols = np.nonzero(speck_mask)
    if rows.size == 0:
        return {"n_specks": 0, "peak_contrast": 0.0, "visible3": 0, "visible5": 0}
    pad = int(round(3.0 / spacing_mm))
    r0, c0 = max(int(rows.min()) - pad, 0), max(int(cols.min()) - pad, 0)
    r1, c1 = int(rows.max()) + pad + 1, int(cols.max()) + pad + 1
    window = intensity[r0:r1, c0:c1]
    mask = speck_mask[r0:r1, c0:c1]
    above = above_local_background(window, spacing_mm)
    residual = (window - ndi.median_filter(window, size=3))[~ndi.binary_dilation(mask, iterations=2)]
    noise = 1.4826 * float(np.median(np.abs(residual - np.median(residual)))) + 1e-9
    labels, n = ndi.label(mask)
    peaks = np.asarray(ndi.maximum(above, labels, index=np.arange(1, n + 1)), dtype=np.float64)
    cnr = peaks / noise
    return {
        "n_specks": int(n),
        "peak_contrast": float(peaks.max() / grey_range),
        "visible3": int((cnr >= 3).sum()),
        "visible5": int((cnr >= 5).sum()),
    }


def measure(coco_path: Path, metrics_path: Path) -> list[dict[str, Any]]:
    """One row per annotated lesion: its morphology, visibility and found flag (None when the
    evaluation has no lesion with that image and box, e.g. an image it could not analyse)."""
    coco = json.loads(coco_path.read_text())
    metrics = json.loads(metrics_path.read_text())
    found = {(les["image"], tuple(round(v) for v in les["box_px"])): bool(les["found"]) for les in metrics["lesions"]}
    # Image names as evaluation gives them (the one rule: matching.truth_from_entry).
    names = {str(entry.image_id): truth_from_entry(entry).name for entry in parse_coco(coco_path)}
    by_image: dict[Any, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out = []
    for image in coco["images"]:
        anns = by_image.get(image["id"], [])
        if not anns:
            continue
        spacing = float(image["spacing_mm"])
        mammogram = read_mammogram(str(coco_path.parent / image["file_name"]), spacing_mm=spacing)
        intensity = monochrome2_intensity(mammogram).astype(np.float64)
        breast = breast_mask(intensity, (spacing, spacing))
        lo, hi = breast_grey_range(intensity, breast, NormaliseConfig(sample_stride=1))  # every pixel
        name = names[str(image["id"])]
        for ann in anns:
            x, y, w, h = ann["bbox"]
            row = lesion_visibility(intensity, coco_rle_to_mask(ann["segmentation"]), spacing, max(hi - lo, 1e-9))
            row.update(
                morphology=ann.get("morphology", ""),
                spacing_mm=spacing,
                found=found.get((name, (round(x), round(y), round(x + w), round(y + h)))),
            )
            out.append(row)
    return out


def binned(rows: Sequence[dict], key: Callable[[dict], float], edges: Sequence[float]) -> list[dict[str, Any]]:
    """Lesions and the fraction found in each ``[edges[i], edges[i + 1])``."""
    table = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = [r for r in rows if lo <= key(r) < hi]
        if sel:
            table.append(
                {
                    "from": lo,
                    "to": hi,
                    "lesions": len(sel),
                    "found": round(float(np.mean([r["found"] for r in sel])), 3),
                }
            )
    return table


def summary(rows: Sequence[dict]) -> dict[str, Any]:
    matched = [r for r in rows if r["found"] is not None]
    morphologies = sorted({r["morphology"] for r in matched})
    return {
        "lesions": len(rows),
        "matched": len(matched),
        "peak_contrast_median": round(float(np.median([r["peak_contrast"] for r in rows])), 3) if rows else None,
        "by_peak_contrast": binned(matched, lambda r: r["peak_contrast"], CONTRAST_BINS),
        "by_visible_specks_cnr3": binned(matched, lambda r: r["visible3"], SPECK_BINS),
        "by_morphology": {
            m: {
                "lesions": len(sel),
                "found": round(float(np.mean([r["found"] for r in sel])), 3),
                "peak_contrast_median": round(float(np.median([r["peak_contrast"] for r in sel])), 3),
            }
            for m in morphologies
            for sel in [[r for r in matched if r["morphology"] == m]]
        },
    }


def _print(result: dict[str, Any]) -> None:
    print(
        f"{result['matched']} of {result['lesions']} lesions matched; median peak contrast {result['peak_contrast_median']}"
    )
    for title, key in (
        ("peak contrast / grey range", "by_peak_contrast"),
        ("specks at CNR >= 3", "by_visible_specks_cnr3"),
    ):
        print(title)
        for b in result[key]:
            print(f"  [{b['from']:g}, {b['to']:g}): {b['lesions']:4d} lesions, found {b['found']:.2f}")
    print("morphology")
    for m, v in result["by_morphology"].items():
        print(
            f"  {m:24s} {v['lesions']:4d} lesions, found {v['found']:.2f}, median peak contrast {v['peak_contrast_median']:.3f}"
        )


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("annotations", type=Path, help="the simulated set's COCO annotations.json")
    ap.add_argument("metrics", type=Path, help="metrics.json of `microcalcai evaluate` on that set")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary and every lesion's row here")
    args = ap.parse_args(argv)
    for path in (args.annotations, args.metrics):
        if not path.is_file():
            ap.error(f"no such file: {path}")
    rows = measure(args.annotations, args.metrics)
    result = summary(rows)
    _print(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**result, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
