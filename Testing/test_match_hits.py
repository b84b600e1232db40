"""evaluation.matching.match_hits: the one rule that picks a lesion's match (the highest-scoring
reported detection that finds it) when the caller already holds the hit matrix, and its refusal
of a matrix the wrong way round."""

from __future__ import annotations

import numpy as np
import pytest

from MicrocalcAI.datasets.coco import BENIGN, MALIGNANT
from MicrocalcAI.evaluation.matching import best_finders, match_detections, match_hits


def test_match_is_the_highest_scoring_reported_finder() -> None:
    hits = np.array([[1, 0], [1, 0], [0, 0], [0, 1]], dtype=bool)
    scores = np.array([0.6, 0.9, 0.7, 0.3])
    match = match_hits(
        hits,
        np.array([MALIGNANT, BENIGN]),
        scores,
        np.array([0.2, 0.8, 0.5, 0.1]),
        ["benign", "malignant", "malignant", "benign"],
        0.5,
    )
    assert list(match.matched) == [True, False]  # lesion 1's only finder scores under 0.5
    assert match.matched_label == ["malignant", None] and match.matched_p[0] == 0.8
    assert list(match.sweep_score) == [0.9, 0.3]  # the FROC sees the sub-threshold finder
    assert list(match.fp_scores_all) == [0.7] and match.n_fp == 1 and match.n_fp_malignant == 1


def test_match_detections_is_match_hits_on_the_boxes_hits() -> None:
    gt = np.array([[10.0, 10.0, 20.0, 20.0]])
    boxes = np.array([[11.0, 11.0, 19.0, 19.0], [50.0, 50.0, 60.0, 60.0]])
    via_boxes = match_detections(gt, np.array([BENIGN]), boxes, [0.8, 0.6], [0.3, 0.9], ["benign", "malignant"], 0.5)
    via_hits = match_hits(
        np.array([[True], [False]]), np.array([BENIGN]), [0.8, 0.6], [0.3, 0.9], ["benign", "malignant"], 0.5
    )
    assert via_boxes.matched_label == via_hits.matched_label == ["benign"]
    assert list(via_boxes.fp_scores_all) == list(via_hits.fp_scores_all) == [0.6]


def test_a_transposed_hit_matrix_is_refused_and_empty_ones_reshape() -> None:
    with pytest.raises(ValueError, match=r"\(detections, lesions\) = \(3, 2\), got \(2, 3\)"):
        match_hits(
            np.zeros((2, 3), bool), np.array([BENIGN, MALIGNANT]), [0.9, 0.8, 0.7], [0.5] * 3, ["benign"] * 3, 0.5
        )
    no_lesions = match_hits(np.zeros((0,), bool), np.zeros(0, np.int64), [0.9, 0.8], [0.5, 0.5], ["benign"] * 2, 0.5)
    assert no_lesions.n_fp == 2 and no_lesions.matched.size == 0


def test_best_finders_respects_eligibility_and_ties() -> None:
    hits = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=bool)
    scores = np.array([0.7, 0.7, 0.9])
    assert list(best_finders(hits, scores)) == [0, 2, -1]  # tie: the first; lesion 2 unfound
    assert list(best_finders(hits, scores, np.array([False, True, False]))) == [1, 1, -1]
    assert list(best_finders(np.zeros((0, 2), bool), np.zeros(0))) == [-1, -1]


def test_inconsistent_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 detection scores, 1 p_malignant and 1 labels"):
        match_hits(np.zeros((2, 1), bool), np.array([BENIGN]), [0.9, 0.8], [0.5], ["benign"], 0.5)
    with pytest.raises(ValueError, match=r"\(detections, lesions\) = \(2, 0\), got \(0, 3\)"):
        match_hits(np.zeros((0, 3), bool), np.zeros(0, np.int64), [0.9, 0.8], [0.5, 0.5], ["benign"] * 2, 0.5)
