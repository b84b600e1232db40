"""Out-of-sample check of a model's calibration: k-fold refits on the findings of one evaluation.

The ECE/Brier "after" numbers that export writes into the manifest are in-sample (measured on
the validation images the calibration was fitted on). With a single labelled set, this script
says how much of that improvement survives on images the fit did not see: it reads the
findings written by ``microcalcai evaluate COCO --out DIR`` (which go down to the merge floor),
recovers the raw network values by inverting the model's calibration, and for each of k folds
(split by image) fits on the other folds and measures ECE and Brier score on the held-out fold,
pooled over folds, for the lesion score (true mark vs false positive) and p_malignant (matched
lesions, malignant vs benign).

    python scripts/calibration_crossval.py COCO DIR/findings --model MANIFEST [--folds 2]

Numbers on simulated data say how well the fit transfers between simulated images, nothing
about real mammograms.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from MicrocalcAI.core.detect.calibration import Calibration
from MicrocalcAI.core.detect.manifest import resolve_model
from MicrocalcAI.evaluation.curves import calibration_bins
from MicrocalcAI.evaluation.evaluate import _findings_index
from MicrocalcAI.evaluation.matching import truth_from_coco
from MicrocalcAI.training.calibration_fit import calibrate_evaluations, fit_calibration
from MicrocalcAI.training.validation import ImageEvaluation


def raw_evaluations(coco: str, findings_dir: str, cal: Calibration) -> list[ImageEvaluation]:
    """One ImageEvaluation per COCO image (stored-pixel boxes), raw values by inversion."""
    by_source, by_name = _findings_index(Path(findings_dir))
    evals = []
    for t in truth_from_coco(coco):
        f = by_source.get(str(Path(t.path).resolve())) if t.path else None
        f = f or by_name.get(t.name)
        lesions = list(f.lesions) if f is not None else []
        evals.append(
            ImageEvaluation(
                name=t.name,
                gt_boxes=np.asarray(t.boxes, dtype=np.float64).reshape(-1, 4),
                gt_labels=np.asarray(t.labels, dtype=np.int64),
                det_boxes=np.array([les.box_px for les in lesions], dtype=np.float64).reshape(-1, 4),
                det_scores=cal.raw_score(np.array([les.score for les in lesions], dtype=np.float64)),
                det_p_malignant=cal.raw_p_malignant(np.array([les.p_malignant for les in lesions], dtype=np.float64)),
                det_labels=[les.label for les in lesions],
            )
        )
    return evals


def _pooled(evals: list[ImageEvaluation]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from MicrocalcAI.training.calibration_fit import calibration_data

    d = calibration_data(evals)
    return {"score": (d.det_scores, d.det_true), "p_malignant": (d.lesion_p, d.lesion_malignant)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("coco")
    ap.add_argument("findings")
    ap.add_argument("--model", default=None, help="the manifest/model the findings were made with")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    spec = resolve_model(args.model)
    cal = spec.calibration or Calibration()
    evals = raw_evaluations(args.coco, args.findings, cal)
    order = np.random.default_rng(args.seed).permutation(len(evals))
    folds = np.array_split(order, args.folds)
    held_out: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {"score": [], "p_malignant": []}
    params = []
    for k, test_idx in enumerate(folds):
        train = [evals[i] for i in order if i not in set(test_idx.tolist())]
        test = [evals[i] for i in test_idx]
        fold_cal, _ = fit_calibration(train, fitted_on=f"fold {k}")
        params.append(fold_cal.to_json())
        raw, calibrated = _pooled(test), _pooled(calibrate_evaluations(test, fold_cal))
        for key in held_out:
            held_out[key].append((raw[key][0], calibrated[key][0], raw[key][1]))
    result: dict[str, object] = {
        "model": f"{spec.name} {spec.version}",
        "n_images": len(evals),
        "folds": args.folds,
        "fold_parameters": params,
    }
    for key, parts in held_out.items():
        raw_p = np.concatenate([p[0] for p in parts])
        cal_p = np.concatenate([p[1] for p in parts])
        y = np.concatenate([p[2] for p in parts])
        before, after = calibration_bins(raw_p, y), calibration_bins(cal_p, y)
        result[key] = {
            "n": int(y.size),
            "n_positive": int(y.sum()),
            "held_out_ece_before": before["ece"],
            "held_out_ece_after": after["ece"],
            "held_out_brier_before": before["brier"],
            "held_out_brier_after": after["brier"],
        }
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
