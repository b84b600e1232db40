"""The lesion hit rule: when a reported box counts as finding a ground-truth box.

A ground-truth (GT) lesion is *found* by a detection when their boxes overlap with
IoU >= :data:`MATCH_IOU` **or** the detection's centre lies inside the GT box. Calcification
clusters have vague borders, so a box that sits on the cluster but is drawn tighter or looser
than the annotation still counts (the centre rule), while the IoU rule credits boxes whose
centre is slightly off a small annotation.

This is the one implementation of that rule: evaluation, training's validation, the sample
checker (``scripts/check_sample.py``) and the Slicer module's self-test all call it, so a model
is selected, reported and smoke-tested by the same yardstick. It lives in the inference core
because the Slicer self-test needs it and the core may not import evaluation code. IoU is
:func:`torchvision.ops.box_iou`. Flips, translations and per-axis scalings change neither IoU
nor "centre inside", so the rule gives the same answer in stored-pixel and canonical frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MATCH_IOU", "MATCH_RULE", "box_intersection", "box_iou", "centre_pixels", "finds", "hit_matrix"]

#: IoU at or above which a detection finds a lesion (the other half of the rule: centre inside).
MATCH_IOU = 0.2
#: The rule in words, as written into metrics files.
MATCH_RULE = f"IoU >= {MATCH_IOU} or detection centre inside the lesion box"


def _as_boxes(boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def centre_pixels(
    boxes: np.ndarray | Sequence[Sequence[float]], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the pixel holding each ``[x0, y0, x1, y1]`` box's centre in an image
    of ``shape``, clipped into it: the one reading of "where a mark is" on a pixel map (the
    breast mask that keeps detections, a map of places that sorts marks)."""
    arr = _as_boxes(boxes)
    cols = np.clip(np.floor((arr[:, 0] + arr[:, 2]) / 2.0), 0, shape[1] - 1).astype(np.int64)
    rows = np.clip(np.floor((arr[:, 1] + arr[:, 3]) / 2.0), 0, shape[0] - 1).astype(np.int64)
    return rows, cols


def box_intersection(
    a: np.ndarray | Sequence[Sequence[float]], b: np.ndarray | Sequence[Sequence[float]]
) -> np.ndarray:
    """(len(a), len(b)) intersection areas of ``[x0, y0, x1, y1]`` boxes: how much of one box
    another covers (merging's containment, a diagnostic's coverage), which IoU cannot say."""
    a_arr, b_arr = _as_boxes(a), _as_boxes(b)
    lt = np.maximum(a_arr[:, None, :2], b_arr[None, :, :2])
    rb = np.minimum(a_arr[:, None, 2:], b_arr[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    return wh[..., 0] * wh[..., 1]


def box_iou(a: np.ndarray | Sequence[Sequence[float]], b: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """(len(a), len(b)) IoU matrix of ``[x0, y0, x1, y1]`` boxes; 0 where both boxes are empty."""
    import torch
    from torchvision.ops import box_iou as tv_box_iou

    a_arr, b_arr = _as_boxes(a), _as_boxes(b)
    if len(a_arr) == 0 or len(b_arr) == 0:
        return np.zeros((len(a_arr), len(b_arr)), dtype=np.float64)
    iou = tv_box_iou(torch.from_numpy(a_arr), torch.from_numpy(b_arr)).numpy()
    return np.nan_to_num(iou, nan=0.0)


def hit_matrix(
    det_boxes: np.ndarray | Sequence[Sequence[float]],
    gt_boxes: np.ndarray | Sequence[Sequence[float]],
    iou_threshold: float = MATCH_IOU,
) -> np.ndarray:
    """(D, G) bool: detection d finds lesion g (IoU >= threshold or d's centre inside g)."""
    det, gt = _as_boxes(det_boxes), _as_boxes(gt_boxes)
    cx = (det[:, 0] + det[:, 2]) / 2
    cy = (det[:, 1] + det[:, 3]) / 2
    inside = (
        (cx[:, None] >= gt[None, :, 0])
        & (cx[:, None] <= gt[None, :, 2])
        & (cy[:, None] >= gt[None, :, 1])
        & (cy[:, None] <= gt[None, :, 3])
    )
    return inside | (box_iou(det, gt) >= iou_threshold)


def finds(det_box: Sequence[float], gt_box: Sequence[float]) -> bool:
    """Whether one detection box finds one lesion box (the rule of :func:`hit_matrix`)."""
    return bool(hit_matrix([det_box], [gt_box])[0, 0])
