"""Where the tiles' boxes are merged into one lesion list for the whole image.

Each tile's detections are shifted back into whole-image canonical coordinates
(:mod:`MicrocalcAI.core.detect.tiling` says where the tiles are) and merged:

1. a box cut by a tile border (touching an *inner* edge of its tile, i.e. an edge that is
   not the image border) is a fragment; it is dropped when a box from another tile, which
   sits away from that tile's own inner edges and therefore saw the lesion whole, is the
   same lesion: clipped to the fragment's tile, it matches the fragment (IoU >= 0.5), as the
   whole lesion cut by that tile would. Score order cannot do this: a fragment may well
   score higher than the whole lesion, and plain NMS then keeps the fragment (or both, since
   a fragment's IoU with the whole box is small when the lesion is mostly outside the tile).
   The whole box takes the fragment's score and p_malignant when the fragment was the more
   confident view: the lesion must not drop below a threshold because the tile that saw it
   whole was less sure. A larger box that merely covers the fragment (context, a group of
   lesions) does not match it, so it neither replaces the fragment nor gains its score;
2. class-agnostic NMS (a benign and a malignant box on one spot are one lesion);
3. a box lying mostly inside a higher-scoring box that also *finds* it (the evaluation's hit
   rule, :func:`MicrocalcAI.core.boxes.hit_matrix`: IoU >= 0.2, or the higher-scoring box's
   centre inside the smaller box) is dropped: a sub-cluster of a lesion already reported,
   whose IoU with the whole is too small for NMS. A larger box centred elsewhere (around
   tissue, or a group of lesions) does not find it, so the smaller box stays a lesion of its
   own: evaluation would not count the larger box as finding it either, and dropping such
   boxes was the largest cause of the real-film benchmark's never-marked clusters
   (docs/real-film.md, section 14). A box that encloses two or more higher-scoring boxes is
   dropped (it groups separate lesions).

Merging always runs on every box scoring at least :data:`MERGE_FLOOR` (0.05), whatever the
caller's score threshold, which is applied to the merged list; nothing scoring below the
floor is ever reported. So the lesions reported at threshold ``t`` are exactly the lesions
reported at any lower threshold with score >= ``t``: evaluation can sweep the threshold over
one run (FROC), and the Slicer threshold slider can filter findings without re-running the
model. Apart from a whole box carrying on its own fragment's score (step 1), no step lets a
weaker box change a stronger one: an earlier version grew a confident box to the union with
a weak box enclosing it, which at low thresholds turned a well-placed lesion box into a large
box centred off the lesion.

Before any of that, a box whose centre is not on the breast mask is dropped: pixels off the
mask are set to 0 by standardisation (air, film border, burned-in labels), so such a box can
only be a response to the mask's own edge, never to calcifications; dropping it first means
it can neither suppress nor absorb a box on the breast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch

from MicrocalcAI.core.boxes import box_intersection, centre_pixels, hit_matrix
from MicrocalcAI.core.detect.manifest import MERGE_FLOOR
from MicrocalcAI.core.detect.tiling import tile_rects
from MicrocalcAI.core.detect.vision import nms
from MicrocalcAI.core.records import Detection

__all__ = [
    "DEFAULT_EDGE_MARGIN",
    "DEFAULT_FRAGMENT_OVERLAP",
    "centres_on_mask",
    "merge_detections",
    "merge_tile_outputs",
    "touches_inner_edge",
]


#: Pixels from an inner tile edge within which a box counts as cut by that edge. Box
#: regression of a cut lesion stops near the edge, not exactly on it; two stride-4 cells.
DEFAULT_EDGE_MARGIN = 8.0
#: IoU a fragment must have with a whole box from another tile, clipped to the fragment's
#: tile, for the two to count as one lesion.
DEFAULT_FRAGMENT_OVERLAP = 0.5


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[..., 2] - boxes[..., 0], 0.0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0.0, None)


def _pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of broadcast box arrays (..., 4); empty boxes (x1 < x0) have area 0."""
    wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    return inter / np.maximum(_area(a) + _area(b) - inter, 1e-9)


def touches_inner_edge(
    boxes: np.ndarray,
    rects: np.ndarray,
    image_shape: tuple[int, int],
    margin: float = DEFAULT_EDGE_MARGIN,
) -> np.ndarray:
    """Whether each box reaches an edge of its own tile (``rects``, one row per box) that is
    not an image border: such a box may be a lesion cut in two by the tile."""
    rows, cols = image_shape
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    left = (rects[:, 0] > 0) & (boxes[:, 0] <= rects[:, 0] + margin)
    top = (rects[:, 1] > 0) & (boxes[:, 1] <= rects[:, 1] + margin)
    right = (rects[:, 2] < cols) & (boxes[:, 2] >= rects[:, 2] - margin)
    bottom = (rects[:, 3] < rows) & (boxes[:, 3] >= rects[:, 3] - margin)
    return left | top | right | bottom


def merge_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    p_malignant: np.ndarray,
    *,
    tile_ids: Optional[np.ndarray] = None,
    rects: Optional[np.ndarray] = None,
    image_shape: Optional[tuple[int, int]] = None,
    iou_threshold: float = 0.3,
    containment: float = 0.7,
    edge_margin: float = DEFAULT_EDGE_MARGIN,
    fragment_overlap: float = DEFAULT_FRAGMENT_OVERLAP,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices of the boxes to keep, highest score first; their scores; their p_malignant).

    ``boxes`` are whole-image canonical ``[x0, y0, x1, y1]``. With ``tile_ids`` (the tile of
    each box, indexing ``rects`` from :func:`tile_rects`) and ``image_shape``, fragments cut
    by a tile border are first dropped in favour of the whole lesion seen by another tile,
    which takes over a more confident fragment's score and p_malignant (see the module
    docstring); without them only NMS and containment apply and every box keeps its own.
    Among equal scores the higher ``p_malignant`` wins, so a tie never hides a malignant call.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    p_malignant = np.asarray(p_malignant, dtype=np.float64).reshape(-1)
    n = len(boxes)
    if len(scores) != n or len(p_malignant) != n:
        raise ValueError(f"boxes ({n}), scores ({len(scores)}) and p_malignant ({len(p_malignant)}) differ in length")
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.float64)

    merged, merged_p = scores.copy(), p_malignant.copy()
    candidates = np.arange(n)
    if tile_ids is not None:
        if rects is None or image_shape is None:
            raise ValueError("tile_ids need rects and image_shape")
        tile_ids = np.asarray(tile_ids, dtype=np.int64).reshape(-1)
        if len(tile_ids) != n:
            raise ValueError(f"tile_ids ({len(tile_ids)}) and boxes ({n}) differ in length")
        rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
        candidates = _absorb_fragments(
            boxes, scores, p_malignant, merged, merged_p, tile_ids, rects, image_shape, edge_margin, fragment_overlap
        )
    final_idx = _suppress(boxes, candidates, merged, merged_p, iou_threshold, containment)
    return final_idx, merged[final_idx], merged_p[final_idx]


def _absorb_fragments(
    boxes: np.ndarray,
    scores: np.ndarray,
    p_malignant: np.ndarray,
    merged: np.ndarray,
    merged_p: np.ndarray,
    tile_ids: np.ndarray,
    rects: np.ndarray,
    image_shape: tuple[int, int],
    edge_margin: float,
    fragment_overlap: float,
) -> np.ndarray:
    """Step 1 of the module docstring: the indices that survive (sorted), fragments seen whole
    elsewhere dropped; ``merged``/``merged_p`` are updated in place for the heirs."""
    cut = touches_inner_edge(boxes, rects[tile_ids], image_shape, edge_margin)
    whole = np.flatnonzero(~cut)
    fragments = np.flatnonzero(cut)
    if not (len(whole) and len(fragments)):
        return np.arange(len(boxes))
    # What each fragment's tile could see of each whole box: the box clipped to that tile.
    tile_rect = rects[tile_ids[fragments]][:, None, :]
    whole_boxes = boxes[whole][None, :, :]
    seen = np.concatenate(
        [
            np.maximum(whole_boxes[..., :2], tile_rect[..., :2]),
            np.minimum(whole_boxes[..., 2:], tile_rect[..., 2:]),
        ],
        axis=2,
    )
    same_lesion = _pairwise_iou(boxes[fragments][:, None, :], seen) >= fragment_overlap
    same_lesion &= tile_ids[fragments][:, None] != tile_ids[whole][None, :]
    replaced = same_lesion.any(axis=1)
    for f in np.flatnonzero(replaced):
        # The best whole view carries the lesion on, as confident as its best view.
        options = whole[same_lesion[f]]
        heir = options[np.argmax(scores[options])]
        frag = fragments[f]
        if scores[frag] > merged[heir]:
            merged[heir], merged_p[heir] = scores[frag], p_malignant[frag]
    return np.sort(np.concatenate([whole, fragments[~replaced]]))


def _suppress(
    boxes: np.ndarray,
    candidates: np.ndarray,
    merged: np.ndarray,
    merged_p: np.ndarray,
    iou_threshold: float,
    containment: float,
) -> np.ndarray:
    """Steps 2 and 3 of the module docstring: NMS, then containment; kept indices, best first."""
    # Order by (score, p_malignant) descending; NMS then sees the tie-broken order as scores.
    order = candidates[np.lexsort((-merged_p[candidates], -merged[candidates]))]
    rank = torch.arange(len(order), 0, -1, dtype=torch.float64)
    kept = order[nms(torch.from_numpy(boxes[order]), rank, float(iou_threshold)).numpy()]

    final: list[int] = []
    areas = np.maximum(_area(boxes), 1e-9)
    for idx in kept:  # already highest first
        if final:
            overlap = box_intersection(boxes[idx : idx + 1], boxes[final])[0]
            # Inside a stronger box that finds it: the same lesion. Inside one that does not
            # (centred elsewhere, IoU < 0.2): a lesion of its own, which that box would hide.
            around = np.asarray(final)[overlap / areas[idx] >= containment]
            inside_stronger = bool(around.size) and bool(hit_matrix(boxes[around], boxes[idx : idx + 1]).any())
            encloses_several = int((overlap / areas[final] >= containment).sum()) >= 2
            if inside_stronger or encloses_several:
                continue
        final.append(int(idx))
    return np.asarray(final, dtype=np.int64)


def merge_tile_outputs(
    outputs: Sequence[dict[str, np.ndarray]],
    origins: Sequence[tuple[int, int]],
    *,
    tile: int,
    image_shape: tuple[int, int],
    score_threshold: float,
    iou_threshold: float = 0.3,
    containment: float = 0.7,
    edge_margin: float = DEFAULT_EDGE_MARGIN,
    mask: Optional[np.ndarray] = None,
    merge_floor: float = MERGE_FLOOR,
) -> list[Detection]:
    """Per-tile model outputs (tile coordinates) -> whole-image canonical detections.

    ``outputs[i]`` holds ``boxes`` (N, 4), ``scores`` (N,) and ``p_malignant`` (N,) of the
    tile at ``origins[i]`` (row, col). Every box scoring at least ``merge_floor`` is merged,
    whatever the threshold; ``score_threshold`` then selects what is reported (nothing below
    the floor), so a higher threshold only ever removes lesions from the list, never moves or
    adds one.
    With ``mask`` (the canonical breast mask), boxes centred off it are dropped before
    merging, so that they can neither suppress nor absorb a box on the breast.
    """
    if len(outputs) != len(origins):
        raise ValueError(f"{len(outputs)} tile outputs for {len(origins)} tiles")
    per_tile = [
        _tile_boxes_in_image(out, origin, t, image_shape, float(merge_floor), mask)
        for t, (out, origin) in enumerate(zip(outputs, origins))
    ]
    if not per_tile:
        return []
    all_boxes, all_scores, all_pmal, all_tiles = (list(column) for column in zip(*per_tile))
    boxes = np.concatenate(all_boxes)
    pmal = np.concatenate(all_pmal)
    kept, scores, pmal_kept = merge_detections(
        boxes,
        np.concatenate(all_scores),
        pmal,
        tile_ids=np.concatenate(all_tiles),
        rects=tile_rects(origins, tile, image_shape),
        image_shape=image_shape,
        iou_threshold=iou_threshold,
        containment=containment,
        edge_margin=edge_margin,
    )
    return [
        Detection(
            box=boxes[i].copy(), label="malignant" if p >= 0.5 else "benign", score=float(score), p_malignant=float(p)
        )
        for i, score, p in zip(kept, scores, pmal_kept)
        if score >= score_threshold
    ]


def _tile_boxes_in_image(
    out: dict[str, np.ndarray],
    origin: tuple[int, int],
    tile_id: int,
    image_shape: tuple[int, int],
    floor: float,
    mask: Optional[np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One tile's boxes at or above ``floor`` in whole-image coordinates, clipped, off-mask
    ones dropped: (boxes, scores, p_malignant, tile ids)."""
    r, c = origin
    rows, cols = image_shape
    boxes = np.asarray(out["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(out["scores"], dtype=np.float64).reshape(-1)
    pmal = np.asarray(out["p_malignant"], dtype=np.float64).reshape(-1)
    keep = scores >= floor
    boxes = boxes[keep] + np.array([c, r, c, r], dtype=np.float64)
    # Zero padding beyond a small image can only yield boxes to clip, never lesions.
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0.0, cols)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0.0, rows)
    valid = _area(boxes) > 0
    if mask is not None:
        valid &= centres_on_mask(boxes, mask)
    tiles = np.full(int(valid.sum()), tile_id, dtype=np.int64)
    return boxes[valid], scores[keep][valid], np.clip(pmal[keep][valid], 0.0, 1.0), tiles


def centres_on_mask(boxes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Boolean per box: does the box centre fall on a breast-mask pixel?"""
    mask = np.asarray(mask, dtype=bool)
    rows, cols = centre_pixels(boxes, mask.shape)
    return mask[rows, cols]
