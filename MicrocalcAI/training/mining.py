"""Hard-negative mining: a trained model's false marks, recorded so the next training aims at them.

Why: the marks a detector makes on real film are mostly look-alikes (dust, emulsion grain,
single-pixel outliers) that a random breast patch rarely shows, so ordinary background patches
teach it little about them. The training sampler already places ``patch.hard_negative_fraction``
of its background patches on an image's recorded ``hard_negatives``
(:class:`MicrocalcAI.training.data.PatchSampler`); this module writes a model's own false marks
into that field, the classic bootstrapping of CAD training (Sung & Poggio, IEEE TPAMI 1998;
hard-negative mining in Felzenszwalb et al., IEEE TPAMI 2010).

A mark is "false" when it does not even touch an annotated lesion's box, so it finds none by the
hit rule (:func:`MicrocalcAI.core.boxes.hit_matrix`) either, and a patch aimed at it is not the
lesion's own. Images with no annotation (normal films) give only false
marks; they may still hold unannotated calcifications, which is the caller's judgement to make.
The input COCO file is never modified: a new one is written, atomically, with every entry kept
and the mined boxes appended (type :data:`MINED_TYPE`, with the mark's score).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from MicrocalcAI.core.atomic import atomic_write_text
from MicrocalcAI.core.boxes import box_intersection
from MicrocalcAI.core.detect.manifest import ModelSpec
from MicrocalcAI.core.errors import DatasetError
from MicrocalcAI.core.progress import ProgressCallback, no_progress
from MicrocalcAI.datasets.coco import coco_bbox, parse_coco, relative_file_name
from MicrocalcAI.training.config import TrainConfigError
from MicrocalcAI.training.data import canonical_boxes
from MicrocalcAI.training.validation import standardised_entries

__all__ = ["MINED_TYPE", "MiningConfig", "MiningResult", "false_marks", "mine_false_marks"]

log = logging.getLogger(__name__)

#: The ``type`` of a mined hard negative in a COCO ``hard_negatives`` list.
MINED_TYPE = "mined_false_mark"


@dataclass(frozen=True)
class MiningConfig:
    """Which marks become hard negatives.

    ``min_score`` sits below the operating threshold on purpose: marks the model nearly
    reports are the ones that decide whether a normal image ranks below one with a lesion
    (the detection-score AUC of ``microcalcai evaluate``). ``max_per_image`` keeps one
    cluttered film from supplying most of the mined set (the highest scores are kept).
    """

    min_score: float = 0.2
    max_per_image: int = 20

    def __post_init__(self) -> None:
        if not 0.0 < self.min_score < 1.0:
            raise TrainConfigError(f"min_score must lie in (0, 1), got {self.min_score}")
        if self.max_per_image < 1:
            raise TrainConfigError(f"max_per_image must be at least 1, got {self.max_per_image}")


@dataclass
class MiningResult:
    """What one mining run wrote."""

    coco_path: Path
    n_images: int
    #: Mined marks per image id (images the model refused are absent).
    per_image: dict[int, int] = field(default_factory=dict)
    #: "file: reason" of each image the pipeline refused; they are kept in the output unchanged.
    skipped: list[str] = field(default_factory=list)

    @property
    def n_mined(self) -> int:
        return sum(self.per_image.values())

    @property
    def n_analysed(self) -> int:
        return self.n_images - len(self.skipped)


def false_marks(
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    gt_boxes: np.ndarray,
    config: MiningConfig,
) -> np.ndarray:
    """Indices of the detections to mine, highest score first: at or above ``min_score``,
    touching no lesion box, at most ``max_per_image``."""
    det = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    keep = scores >= config.min_score
    if len(gt) and len(det):
        # Touching no lesion box implies finding none by the hit rule (a hit overlaps its lesion).
        keep &= ~(box_intersection(det, gt) > 0).any(axis=1)
    order = np.flatnonzero(keep)
    order = order[np.argsort(-scores[order], kind="stable")]
    return order[: config.max_per_image]


def mine_false_marks(
    coco_json: os.PathLike | str,
    out_json: os.PathLike | str,
    spec: ModelSpec,
    model: torch.nn.Module,
    device: torch.device | str = "cpu",
    config: MiningConfig = MiningConfig(),
    *,
    progress: ProgressCallback = no_progress,
) -> MiningResult:
    """Run ``model`` on every image of ``coco_json`` through the inference path and write
    ``out_json``: the same dataset with each image's false marks appended to its
    ``hard_negatives`` (stored-pixel COCO boxes). File names are rewritten relative to the new
    file's folder, so it may live anywhere. Images the pipeline refuses are reported and kept
    unchanged; the run goes on."""
    from MicrocalcAI.core.detect.run import detect

    source, out = Path(coco_json), Path(out_json)
    if out.resolve() == source.resolve():
        raise DatasetError(f"mining writes a new COCO file; {out} is its input")
    entries = parse_coco(source)  # validates every entry before any model time is spent
    data: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    raw_by_id = {int(e["id"]): e for e in data["images"]}
    for entry in entries:
        raw_by_id[entry.image_id]["file_name"] = relative_file_name(entry.path, out.parent)
    device = torch.device(device) if not isinstance(device, torch.device) else device
    model.eval()
    result = MiningResult(coco_path=out, n_images=len(entries))
    for entry, canonical in standardised_entries(entries, spec, "mining", progress=progress, skipped=result.skipped):
        detections = detect(canonical, model, spec, device=device, score_threshold=config.min_score)
        boxes = np.array([d.box for d in detections], dtype=np.float64).reshape(-1, 4)
        scores = np.array([d.score for d in detections], dtype=np.float64)
        gt = canonical_boxes(entry.boxes_stored, canonical.transform, canonical.image.shape)
        chosen = false_marks(boxes, scores, gt, config)
        stored = canonical.transform.to_stored_boxes(boxes[chosen]).reshape(-1, 4)
        mined = [
            {"type": MINED_TYPE, "bbox": coco_bbox(box.tolist())[0], "score": round(float(scores[d]), 4)}
            for box, d in zip(stored, chosen)
        ]
        raw = raw_by_id[entry.image_id]
        raw["hard_negatives"] = list(raw.get("hard_negatives") or []) + mined
        result.per_image[entry.image_id] = len(mined)
    if not isinstance(data.get("info"), dict):
        data["info"] = {}
    data["info"]["hard_negative_mining"] = {
        "source": str(source.resolve()),
        "model": f"{spec.name} {spec.version}",
        "min_score": config.min_score,
        "max_per_image": config.max_per_image,
        "n_mined": result.n_mined,
        "n_images_refused": len(result.skipped),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(data, indent=1))
    log.info(
        "%s: %d false marks of %s %s mined from %d images",
        out,
        result.n_mined,
        spec.name,
        spec.version,
        result.n_analysed,
    )
    progress(1.0, f"mined {result.n_mined} false marks from {result.n_analysed} images")
    return result
