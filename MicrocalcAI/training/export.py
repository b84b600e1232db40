"""Export: a training checkpoint becomes fp16 weights plus a manifest entry that ``--model`` loads.

Operating points are chosen on validation data and every reported metric is measured on the
*exported* fp16 weights loaded back through :func:`MicrocalcAI.core.detect.weights.load_detector`,
i.e. on what users run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from MicrocalcAI.core.atomic import atomic_write_text, staged_path
from MicrocalcAI.core.detect.manifest import MANIFEST_NAME, ModelSpec, sha256_file
from MicrocalcAI.core.detect.network import DetectorConfig, select_device
from MicrocalcAI.core.equalise import NoiseEqualisation
from MicrocalcAI.core.errors import InputError, ModelError
from MicrocalcAI.core.progress import ProgressCallback, no_progress, sub_progress
from MicrocalcAI.datasets.coco import parse_coco
from MicrocalcAI.evaluation.curves import EVAL_MIN_SCORE
from MicrocalcAI.training.calibration_fit import check_fp_rate, check_negatives, fit_operating_points
from MicrocalcAI.training.checkpoints import load_checkpoint, model_from_checkpoint
from MicrocalcAI.training.validation import evaluate_coco, summarise

__all__ = ["export_model", "write_manifest_entry"]

log = logging.getLogger(__name__)


def write_manifest_entry(out_dir: os.PathLike | str, spec: ModelSpec, make_default: bool = True) -> Path:
    """Add or replace ``spec`` (by name) in ``out_dir/manifest.json``, atomically."""
    path = Path(out_dir) / MANIFEST_NAME
    data: dict[str, Any] = {"schema_version": 1, "default": None, "models": []}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ModelError(f"existing manifest {path} is not valid JSON; fix or remove it: {exc}") from exc
    models = [m for m in data.get("models", []) if m.get("name") != spec.name]
    models.append(spec.to_json())
    data["models"] = models
    data.setdefault("schema_version", 1)
    if make_default or not data.get("default"):
        data["default"] = spec.name
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def export_model(
    checkpoint_path: os.PathLike | str,
    out_dir: os.PathLike | str,
    name: str,
    version: str,
    *,
    val_coco: Optional[os.PathLike | str] = None,
    test_coco: Optional[os.PathLike | str] = None,
    training_data: str = "",
    target_fp_per_image: float = 1.0,
    make_default: bool = True,
    device: str = "auto",
    extra_metrics: Optional[dict[str, Any]] = None,
    calibrate: bool = True,
    ood_train_coco: Optional[Sequence[os.PathLike | str]] = None,
    negatives_coco: Optional[Sequence[os.PathLike | str]] = None,
    max_negative_fp_per_image: float = 1.0,
    progress: ProgressCallback = no_progress,
) -> ModelSpec:
    """Write fp16 weights + a manifest entry for a checkpoint; return the entry.

    With ``val_coco`` and ``calibrate`` (the default), the score and p_malignant calibration
    is fitted on the validation detections (:mod:`MicrocalcAI.training.calibration_fit`) and
    stored in the entry; operating points are then chosen on ``val_coco``'s calibrated values
    (lesion-score threshold: best sensitivity at ``target_fp_per_image``; p_malignant
    thresholds: :func:`choose_malignancy_operating_points`; risk categories on the image
    probability of ``image_risk``). Every metric is measured on the *exported* fp16 weights
    loaded back through :func:`load_detector`, i.e. on what users run.
    With ``ood_train_coco`` (training images) and ``val_coco`` (its threshold), the model's
    out-of-distribution reference is fitted too (:func:`MicrocalcAI.training.ood.fit_model_reference`).
    With ``negatives_coco`` (COCO files of images whose every mark counts as false, e.g. real
    films from :func:`MicrocalcAI.simulation.delivery.write_film_deliveries`) and ``val_coco``,
    the threshold is raised where needed so that they make at most ``max_negative_fp_per_image``
    (:func:`choose_operating_points`); ``metrics["negatives"]`` records their false marks per
    image at the validation-only and the chosen threshold.
    """
    from MicrocalcAI.core.detect.weights import load_detector, save_weights

    dev = select_device(device)
    model, mc = model_from_checkpoint(checkpoint_path, "cpu")
    for coco in (val_coco, test_coco):  # a bad file must fail before anything is written
        if coco is not None:
            parse_coco(coco)
    negative_files = check_negatives(negatives_coco, max_negative_fp_per_image)
    if ood_train_coco and val_coco is None:
        raise InputError("fitting the OOD reference (ood_train_coco) needs val_coco: its threshold is chosen there")
    if negative_files and val_coco is None:
        raise InputError(
            "the false-mark cap on negatives (negatives_coco) needs val_coco: the threshold is chosen there"
        )
    check_fp_rate(target_fp_per_image, "target_fp_per_image")
    out = Path(out_dir)
    weights_file = f"{name}-{version}.safetensors"
    # Measured under a hidden name and renamed only once everything is measured, so a failed
    # or interrupted export neither leaves a stray weights file nor breaks the checksum of an
    # existing manifest entry that points at the final name.
    with staged_path(out / weights_file) as staged:
        sha = save_weights(model, staged, DetectorConfig.from_json(mc))
        spec = ModelSpec(
            name=name,
            version=version,
            file=staged.name,
            sha256=sha,
            backbone=mc["backbone"],
            spacing_mm=float(mc["spacing_mm"]),
            assumed_input_spacing_mm=float(mc["assumed_input_spacing_mm"]),
            tile_size=int(mc["tile_size"]),
            tile_overlap=int(mc["tile_overlap"]),
            anchor_sizes=tuple(int(a) for a in mc["anchor_sizes"]),
            noise_equalisation=NoiseEqualisation.from_setting(mc.get("noise_equalisation")),
            training_data=training_data,
            folder=str(out),
        )
        if sha256_file(spec.weights_path) != sha:
            raise ModelError(f"written weights {spec.weights_path} do not match their own checksum")
        shipped = load_detector(spec, dev)
        metrics: dict[str, Any] = {"checkpoint_iteration": int(load_checkpoint(checkpoint_path)["iteration"])}
        if val_coco is not None:
            fitted = fit_operating_points(
                val_coco,
                spec,
                shipped,
                dev,
                negative_files=negative_files,
                calibrate=calibrate,
                target_fp_per_image=target_fp_per_image,
                max_negative_fp_per_image=max_negative_fp_per_image,
                progress=sub_progress(progress, 0.0, 0.5),
            )
            points = fitted.points
            if fitted.calibration is not None:
                spec.calibration, metrics["calibration"] = fitted.calibration, fitted.calibration_record
            if fitted.negatives is not None:
                metrics["negatives"] = fitted.negatives
            spec.score_threshold = points.score_threshold
            spec.operating_points = points.operating_points
            spec.risk_categories = points.risk_categories
            floor = min(EVAL_MIN_SCORE, spec.reporting_floor)  # the merge floor on the reported scale
            metrics["validation"] = summarise(fitted.evaluations, spec.score_threshold, floor=floor) | {
                "dataset": str(val_coco),
                "n_images_refused": fitted.n_validation_refused,
            }
            metrics["operating_point_rule"] = points.rule
        if test_coco is not None:
            metrics["test"] = evaluate_coco(test_coco, spec, shipped, dev, progress=sub_progress(progress, 0.5, 1.0))
        if extra_metrics:
            metrics.update(extra_metrics)
        spec.metrics = metrics
    spec.file = weights_file
    write_manifest_entry(out, spec, make_default=make_default)
    if ood_train_coco and val_coco is not None:
        from MicrocalcAI.training.ood import fit_model_reference

        spec, _ = fit_model_reference(out, ood_train_coco, [val_coco], name=name, device=device)
    progress(1.0, f"exported {name} {version} to {out}")
    log.info("exported %s %s (%s) to %s", name, version, weights_file, out)
    return spec
