"""The one lesion hit rule (MicrocalcAI.core.boxes): IoU >= 0.2 or detection centre inside."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from MicrocalcAI.core.boxes import MATCH_IOU, box_intersection, box_iou, finds, hit_matrix

REPO = Path(__file__).resolve().parents[1]


def test_iou_is_hand_computed_value_and_zero_for_empty_inputs():
    a = np.array([[0, 0, 10, 10]], dtype=float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=float)
    # overlap 5x10 = 50, union 150 -> 1/3; disjoint -> 0; identical -> 1
    assert box_iou(a, b)[0].tolist() == pytest.approx([1 / 3, 0.0, 1.0])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)
    assert box_iou(a, np.zeros((0, 4))).shape == (1, 0)
    assert box_iou([[3, 3, 3, 3]], [[3, 3, 3, 3]])[0, 0] == 0.0  # empty boxes: 0, not nan


@pytest.mark.parametrize(
    ("gt", "det", "hit"),
    [
        ((0, 0, 10, 10), (20, 20, 30, 30), False),  # far
        ((0, 0, 10, 10), (2, 2, 8, 8), True),  # centre inside (IoU 0.36 too)
        ((0, 0, 10, 10), (8, -30, 40, 9), False),  # centre outside, small IoU
        ((0, 0, 10, 10), (5, 0, 15, 10), True),  # centre (10, 5) on the edge counts; IoU 1/3
        ((100, 100, 140, 140), (110, 110, 200, 200), False),  # centre outside, IoU 900/8800 < 0.2
        ((100, 100, 140, 140), (60, 60, 160, 160), True),  # centre (110, 110) inside, IoU 0.16
        ((100, 100, 140, 140), (125, 125, 175, 175), False),  # centre outside, IoU 225/3875
        ((100, 100, 140, 140), (105, 120, 145, 165), True),  # centre outside, IoU 700/2700 >= 0.2
    ],
)
def test_hit_rule_is_iou_or_centre_inside(gt, det, hit):
    assert finds(det, gt) is hit
    assert hit_matrix(np.array([det], float), np.array([gt], float))[0, 0] == hit


def test_hit_matrix_shape_and_threshold():
    gt = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], dtype=float)
    det = np.array([[0, 0, 10, 10], [103, 90, 113, 100], [50, 50, 60, 60]], dtype=float)
    hits = hit_matrix(det, gt)
    assert hits.shape == (3, 2)
    assert hits.tolist() == [[True, False], [False, False], [False, False]]
    assert MATCH_IOU == 0.2
    assert hit_matrix(np.zeros((0, 4)), gt).shape == (0, 2)
    assert hit_matrix(det, np.zeros((0, 4))).shape == (3, 0)


def test_sample_checker_uses_the_rule(tmp_path):
    """scripts/check_sample.py: found by the centre rule although IoU is below 0.2; exit 1 on a miss."""
    truth = {"file": "x.dcm", "lesions": [{"class": "malignant", "box_px": [100, 100, 140, 140]}]}
    centre_only = {"lesions": [{"id": 1, "label": "malignant", "p_malignant": 0.9, "box_px": [60, 60, 160, 160]}]}
    elsewhere = {"lesions": [{"id": 1, "label": "benign", "p_malignant": 0.1, "box_px": [300, 300, 320, 320]}]}
    (tmp_path / "t.json").write_text(json.dumps(truth))
    results = []
    for name, findings in (("found", centre_only), ("missed", elsewhere)):
        (tmp_path / f"{name}.json").write_text(json.dumps(findings))
        run = subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts" / "check_sample.py"),
                str(tmp_path / f"{name}.json"),
                str(tmp_path / "t.json"),
            ],
            capture_output=True,
            text=True,
        )
        results.append((run.returncode, "MISSED" in run.stdout))
    assert results == [(0, False), (1, True)]


def test_box_intersection_is_the_overlapping_area_of_every_pair():
    a = np.array([[0.0, 0, 10, 10], [20.0, 20, 30, 30]])
    b = np.array([[5.0, 5, 15, 15], [0.0, 0, 10, 10], [100.0, 100, 110, 110]])
    assert box_intersection(a, b).tolist() == [[25.0, 100.0, 0.0], [0.0, 0.0, 0.0]]
    assert box_intersection(a, np.zeros((0, 4))).shape == (2, 0)


def test_centre_pixels_floor_the_centre_and_clip_into_the_image() -> None:
    from MicrocalcAI.core.boxes import centre_pixels

    boxes = [[10.0, 20.0, 13.0, 25.0], [-8.0, -8.0, -2.0, -2.0], [95.0, 45.0, 120.0, 60.0], [3.0, 4.0, 3.0, 4.0]]
    rows, cols = centre_pixels(boxes, (50, 100))
    assert rows.tolist() == [22, 0, 49, 4] and cols.tolist() == [11, 0, 99, 3]  # 22.5 -> 22; clipped both ways
    empty_rows, empty_cols = centre_pixels(np.zeros((0, 4)), (50, 100))
    assert empty_rows.shape == empty_cols.shape == (0,)
