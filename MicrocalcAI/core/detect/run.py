"""Where the detector runs: the network over every tile that touches the breast, then merged.

:func:`detect` is the detection stage of the pipeline. It lives in its own module rather than
in the package ``__init__`` so that importing :mod:`MicrocalcAI.core.detect.manifest` (which
the Slicer module does at start-up) never imports torch.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Optional, Union

import numpy as np
import torch

from MicrocalcAI.core.detect.manifest import ModelSpec
from MicrocalcAI.core.detect.merge import merge_tile_outputs
from MicrocalcAI.core.detect.tiling import extract_tile, tile_origins
from MicrocalcAI.core.errors import InputError, ModelError
from MicrocalcAI.core.progress import ProgressCallback, no_progress
from MicrocalcAI.core.records import CanonicalImage, Detection

__all__ = ["calibrated", "detect"]

log = logging.getLogger(__name__)


def _run_tiles(
    model: torch.nn.Module,
    image: np.ndarray,
    origins: list[tuple[int, int]],
    tile: int,
    target: torch.device,
    batch_size: int,
    report: ProgressCallback,
) -> list[dict[str, np.ndarray]]:
    """The network's raw output per tile (tile coordinates), in eval mode; the model's
    train/eval mode is restored afterwards, even when ``report`` cancels."""
    n = len(origins)
    outputs: list[dict[str, np.ndarray]] = []
    was_training = model.training
    model.eval()
    try:
        report(0.0, f"detecting: tile 0/{n}")
        # One inference-mode region for all tiles; each batch is one (B, H, W) array seen as
        # 3 channels without copying (the model normalises into its own batch tensor anyway).
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                batch = origins[start : start + batch_size]
                grey = torch.from_numpy(np.stack([extract_tile(image, o, tile) for o in batch])).to(target)
                results = model(list(grey.unsqueeze(1).expand(-1, 3, -1, -1)))
                for res in results:
                    outputs.append({key: res[key].float().cpu().numpy() for key in ("boxes", "scores", "p_malignant")})
                done = start + len(batch)
                report(done / n, f"detecting: tile {done}/{n}")
    finally:
        model.train(was_training)
    return outputs


def _model_device(model: torch.nn.Module) -> Optional[torch.device]:
    first = next(iter(model.parameters()), None)
    return None if first is None else first.device


def calibrated(detections: list[Detection], spec: ModelSpec) -> list[Detection]:
    """``detections`` (raw network values, merged) with the model's calibrated score and
    p_malignant; the identity (the same objects) when the model has no calibration.

    Both maps are strictly increasing, so the order and the malignant/benign labels
    (p >= 0.5) stay as merging left them.
    """
    cal = spec.calibration
    if cal is None or cal.is_identity or not detections:
        return detections
    scores = cal.score(np.array([d.score for d in detections]))
    p_mal = cal.p_malignant(np.array([d.p_malignant for d in detections]))
    return [replace(d, score=float(s), p_malignant=float(p)) for d, s, p in zip(detections, scores, p_mal)]


def detect(
    canonical: CanonicalImage,
    model: torch.nn.Module,
    spec: ModelSpec,
    *,
    device: Union[str, torch.device] = "cpu",
    score_threshold: Optional[float] = None,
    batch_size: int = 4,
    progress: Optional[ProgressCallback] = None,
) -> list[Detection]:
    """Run the detector over the breast of one canonical image; lesions highest score first.

    Scores and p_malignant are calibrated by the model's calibration (``spec.calibration``,
    :mod:`MicrocalcAI.core.detect.calibration`) after merging, which runs on raw scores above
    :data:`~MicrocalcAI.core.detect.manifest.MERGE_FLOOR`; ``score_threshold`` (default the
    model's) is on the calibrated scale and is applied last, so a lesion is reported exactly
    when its calibrated score reaches it. Tiling comes from the manifest entry (``spec.tile_size``/``tile_overlap``) because the
    model was trained on that geometry. Boxes are canonical coordinates of the whole image.
    ``progress`` gets the fraction of tiles done and may raise
    :class:`~MicrocalcAI.core.errors.CancelledError`, which propagates after the model's
    train/eval mode is restored.
    """
    report = progress or no_progress
    threshold = spec.score_threshold if score_threshold is None else float(score_threshold)
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"score threshold must be in [0, 1], got {threshold}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    image = np.asarray(canonical.image, dtype=np.float32)
    if image.ndim != 2:
        raise InputError(f"canonical image must be 2-D, got shape {image.shape}")
    target = torch.device(device)
    model_device = _model_device(model)
    if model_device is not None and model_device.type != target.type:
        raise ModelError(f"the model is on {model_device} but detection was asked to run on {target}; move one of them")

    tile, overlap = int(spec.tile_size), int(spec.tile_overlap)
    origins = tile_origins(image.shape, canonical.mask, tile, overlap)
    n = len(origins)
    if n == 0:
        log.warning("breast mask is empty: nothing to detect")
        report(1.0, "detecting: no breast tissue")
        return []

    outputs = _run_tiles(model, image, origins, tile, target, batch_size, report)
    merged = merge_tile_outputs(
        outputs,
        origins,
        tile=tile,
        image_shape=(int(image.shape[0]), int(image.shape[1])),
        score_threshold=0.0,  # everything merged (raw score >= MERGE_FLOOR); the threshold is calibrated
        mask=canonical.mask,
    )
    detections = [d for d in calibrated(merged, spec) if d.score >= threshold]
    log.debug("%d lesion(s) above %.2f from %d tile(s)", len(detections), threshold, n)
    return detections
