"""Tiling, cross-tile merging and end-to-end detection (MicrocalcAI.core.detect: tiling, merge, run), on real torch."""

from __future__ import annotations

import numpy as np
import pytest
from _detect_helpers import SMALL_OVERLAP, SMALL_TILE, breast_like, canonical_image, small_detector, tiling_spec
from hypothesis import example, given, settings
from hypothesis import strategies as st

from MicrocalcAI.core.detect.manifest import MERGE_FLOOR
from MicrocalcAI.core.detect.merge import merge_detections, merge_tile_outputs, touches_inner_edge
from MicrocalcAI.core.detect.run import detect
from MicrocalcAI.core.detect.tiling import extract_tile, tile_origins, tile_rects
from MicrocalcAI.core.errors import CancelledError, InputError
from MicrocalcAI.core.records import Detection

# ---------------------------------------------------------------- tiling


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 300),
    cols=st.integers(1, 300),
    tile=st.integers(16, 96),
    overlap_frac=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**16),
    density=st.floats(0.0, 0.05),
)
def test_tiles_cover_every_mask_pixel_and_only_touch_breast(rows, cols, tile, overlap_frac, seed, density):
    overlap = min(int(tile * overlap_frac), tile - 1)
    mask = np.random.default_rng(seed).random((rows, cols)) < density
    origins = tile_origins((rows, cols), mask, tile, overlap)
    covered = np.zeros_like(mask)
    for r, c in origins:
        assert 0 <= r and 0 <= c
        assert r + tile <= max(rows, tile) and c + tile <= max(cols, tile)  # no tile hangs off a big image
        window = mask[r : r + tile, c : c + tile]
        assert window.any()  # air-only tiles are skipped
        covered[r : r + tile, c : c + tile] = True
    assert not (mask & ~covered).any()
    assert len(set(origins)) == len(origins)


def test_tiles_overlap_by_at_least_the_requested_amount():
    mask = np.ones((2000, 1000), dtype=bool)
    origins = tile_origins(mask.shape, mask, 512, 128)
    rows = sorted({r for r, _ in origins})
    cols = sorted({c for _, c in origins})
    assert rows[0] == 0 and rows[-1] == 2000 - 512 and cols[0] == 0 and cols[-1] == 1000 - 512
    assert all(b - a <= 512 - 128 for a, b in zip(rows, rows[1:]))
    assert all(b - a <= 512 - 128 for a, b in zip(cols, cols[1:]))
    assert len(origins) == len(rows) * len(cols) == 5 * 3  # fewest tiles with that overlap


def test_tiles_over_air_are_skipped():
    mask = np.zeros((1200, 1200), dtype=bool)
    mask[:, :300] = True  # breast only along the chest wall
    origins = tile_origins(mask.shape, mask, 512, 128)
    assert origins and all(c < 300 for _, c in origins)
    full = tile_origins(mask.shape, np.ones_like(mask), 512, 128)
    assert len(origins) < len(full)
    assert tile_origins(mask.shape, np.zeros_like(mask), 512, 128) == []


def test_tiling_rejects_bad_arguments():
    with pytest.raises(InputError):
        tile_origins((100, 100), np.ones((100, 100), bool), 64, 64)
    with pytest.raises(InputError):
        tile_origins((100, 100), np.ones((50, 100), bool), 64, 16)


def test_small_image_tile_is_zero_padded():
    image = np.full((100, 70), 0.5, dtype=np.float32)
    window = extract_tile(image, (0, 0), 128)
    assert window.shape == (128, 128)
    assert (window[:100, :70] == 0.5).all() and (window[100:] == 0).all() and (window[:, 70:] == 0).all()


# ---------------------------------------------------------------- merging

TWO_TILES = [(0, 0), (0, 384)]  # (row, col): columns [0, 512) and [384, 896)
SHAPE = (512, 896)


def test_inner_edges_only_count_inside_the_image():
    rects = tile_rects(TWO_TILES, 512, SHAPE)
    boxes = np.array([[490.0, 100, 511, 130], [870, 100, 896, 130], [384, 100, 420, 130], [0, 0, 30, 30]])
    owner = rects[[0, 1, 1, 0]]
    # right edge of tile 0 is inner; right edge of tile 1 and left edge of tile 0 are image borders
    assert touches_inner_edge(boxes, owner, SHAPE).tolist() == [True, False, True, False]


def test_fragment_cut_by_a_tile_border_yields_to_the_whole_lesion():
    # Lesion spans x 490-540. Tile 0 ends at 512 and sees a confident fragment; tile 1 sees it whole.
    boxes = np.array([[490.0, 200, 512, 230], [489.0, 199, 541, 231]])
    scores = np.array([0.9, 0.6])
    pmal = np.array([0.2, 0.7])
    rects = tile_rects(TWO_TILES, 512, SHAPE)
    kept, merged, _ = merge_detections(boxes, scores, pmal, tile_ids=np.array([0, 1]), rects=rects, image_shape=SHAPE)
    assert kept.tolist() == [1]
    # The whole box carries the lesion at the fragment's better score, so a threshold between
    # the two cannot lose it.
    assert merged.tolist() == [0.9]
    # Without tile information plain NMS keeps the higher-scoring fragment instead.
    assert merge_detections(boxes, scores, pmal)[0].tolist() == [0]


def test_fragment_survives_when_no_tile_sees_the_lesion_whole():
    boxes = np.array([[490.0, 200, 512, 230], [600.0, 300, 640, 340]])
    rects = tile_rects(TWO_TILES, 512, SHAPE)
    kept, merged, _ = merge_detections(
        boxes, np.array([0.9, 0.8]), np.array([0.5, 0.5]), tile_ids=np.array([0, 1]), rects=rects, image_shape=SHAPE
    )
    assert sorted(kept.tolist()) == [0, 1]
    assert merged.tolist() == [0.9, 0.8]


def test_cross_tile_duplicates_merge_but_separate_lesions_stay():
    # The same lesion seen whole by both tiles (x 420-470, in their overlap), and a second,
    # nearby lesion seen by tile 1 only.
    boxes = np.array([[420.0, 100, 470, 150], [421.0, 101, 471, 149], [480.0, 100, 505, 150]])
    scores = np.array([0.7, 0.8, 0.5])
    rects = tile_rects(TWO_TILES, 512, SHAPE)
    kept, _, _ = merge_detections(
        boxes, scores, np.array([0.1, 0.2, 0.9]), tile_ids=np.array([0, 1, 1]), rects=rects, image_shape=SHAPE
    )
    assert kept.tolist() == [1, 2]


def test_box_mostly_inside_a_stronger_box_is_dropped():
    boxes = np.array([[100.0, 100, 200, 200], [110.0, 110, 150, 150], [150.0, 150, 260, 260]])
    kept, _, _ = merge_detections(boxes, np.array([0.9, 0.8, 0.7]), np.array([0.5, 0.5, 0.5]))
    # Box 1 (IoU 0.16 with box 0, too low for NMS) lies inside box 0; box 2 only overlaps a corner.
    assert kept.tolist() == [0, 2]
    assert merge_detections(boxes, np.array([0.9, 0.8, 0.7]), np.array([0.5] * 3), containment=1.01)[0].tolist() == [
        0,
        1,
        2,
    ]


def test_a_cluster_inside_a_stronger_box_that_does_not_find_it_is_kept():
    # A confident large box around tissue or a group (centre at 200, 200) and a weaker small
    # cluster box wholly inside it but far from its centre (IoU 0.02): the large box would not
    # be counted as finding that cluster, so the cluster must stay a lesion of its own. A small
    # box around the large box's centre is a sub-cluster of the same finding and goes.
    boxes = np.array([[100.0, 100, 300, 300], [110.0, 110, 140, 140], [185.0, 185, 215, 215]])
    kept, scores, _ = merge_detections(boxes, np.array([0.9, 0.3, 0.5]), np.array([0.5, 0.5, 0.5]))
    assert kept.tolist() == [0, 1]
    assert scores.tolist() == [0.9, 0.3]
    # Found through IoU alone: the stronger box (4x the area, centre (40, 15)) is centred
    # outside the small box [0, 0, 20, 30], whose IoU with it is 0.25 (under NMS's 0.3, at
    # least the hit rule's 0.2): the same lesion, dropped.
    boxes = np.array([[0.0, 0, 80, 30], [0.0, 0, 20, 30]])
    kept, _, _ = merge_detections(boxes, np.array([0.9, 0.3]), np.array([0.5, 0.5]))
    assert kept.tolist() == [0]


def test_equal_scores_keep_the_more_malignant_box():
    boxes = np.array([[0.0, 0, 10, 10], [0.0, 0, 10, 11]])
    kept, _, _ = merge_detections(boxes, np.array([0.5, 0.5]), np.array([0.3, 0.8]))
    assert kept.tolist() == [1]


def test_merge_tile_outputs_maps_tiles_to_whole_image_coordinates():
    origins = [(0, 0), (0, 384), (384, 0)]
    outputs = [
        {"boxes": np.array([[10.0, 20, 40, 60]]), "scores": np.array([0.9]), "p_malignant": np.array([0.8])},
        {
            "boxes": np.array([[100.0, 50, 130, 90], [5, 5, 9, 9]]),
            "scores": np.array([0.6, 0.1]),
            "p_malignant": np.array([0.3, 0.9]),
        },
        {"boxes": np.array([[200.0, 300, 220, 330]]), "scores": np.array([0.5]), "p_malignant": np.array([0.5])},
    ]
    dets = merge_tile_outputs(outputs, origins, tile=512, image_shape=(896, 896), score_threshold=0.3)
    assert all(isinstance(d, Detection) for d in dets)
    got = {tuple(d.box.tolist()): (d.label, d.score, d.p_malignant) for d in dets}
    assert got == {
        (10.0, 20.0, 40.0, 60.0): ("malignant", 0.9, 0.8),
        (484.0, 50.0, 514.0, 90.0): ("benign", 0.6, 0.3),  # column offset 384
        (200.0, 684.0, 220.0, 714.0): ("malignant", 0.5, 0.5),  # row offset 384; p = 0.5 -> malignant
    }
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)


def test_merge_tile_outputs_dedupes_a_lesion_seen_by_two_tiles():
    origins = [(0, 0), (0, 384)]
    # One lesion at whole-image x 420-470: local x 420-470 in tile 0, 36-86 in tile 1.
    outputs = [
        {"boxes": np.array([[420.0, 100, 470, 150]]), "scores": np.array([0.7]), "p_malignant": np.array([0.6])},
        {"boxes": np.array([[36.0, 100, 86, 150]]), "scores": np.array([0.75]), "p_malignant": np.array([0.7])},
    ]
    dets = merge_tile_outputs(outputs, origins, tile=512, image_shape=(512, 896), score_threshold=0.3)
    assert len(dets) == 1
    assert np.allclose(dets[0].box, [420, 100, 470, 150]) and dets[0].score == 0.75


def test_merge_tile_outputs_clips_boxes_to_a_small_image():
    outputs = [
        {
            "boxes": np.array([[50.0, 60, 120, 128], [110, 110, 128, 128]]),
            "scores": np.array([0.9, 0.8]),
            "p_malignant": np.array([0.1, 0.1]),
        }
    ]
    dets = merge_tile_outputs(outputs, [(0, 0)], tile=128, image_shape=(100, 100), score_threshold=0.3)
    assert len(dets) == 1  # the second box lies wholly in the zero padding
    assert dets[0].box.tolist() == [50.0, 60.0, 100.0, 100.0]


# ---------------------------------------------------------------- end to end, real model


def test_detect_runs_the_real_model_over_the_breast():
    image, mask = breast_like((420, 300), seed=4)
    canonical = canonical_image(image, mask)
    spec = tiling_spec()
    model = small_detector("mobilenet_v2", pretrained=True)
    calls: list[tuple[float, str]] = []
    dets = detect(
        canonical, model, spec, score_threshold=0.05, batch_size=2, progress=lambda f, m: calls.append((f, m))
    )
    n_tiles = len(tile_origins(image.shape, mask, SMALL_TILE, SMALL_OVERLAP))
    assert n_tiles == 4
    assert calls[0] == (0.0, f"detecting: tile 0/{n_tiles}")
    assert calls[-1] == (1.0, f"detecting: tile {n_tiles}/{n_tiles}")
    assert [f for f, _ in calls] == sorted(f for f, _ in calls)
    assert dets, "an untrained detector still scores ~0.5 on foreground"
    for d in dets:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 420
        assert 0.05 <= d.score <= 1 and 0 <= d.p_malignant <= 1
        assert d.label == ("malignant" if d.p_malignant >= 0.5 else "benign")
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
    # The manifest threshold applies when none is given, and filters.
    small = canonical_image(image[:200, :200], mask[:200, :200])  # one tile: cheap
    loose = detect(small, model, tiling_spec(score_threshold=0.05))
    strict = detect(small, model, tiling_spec(score_threshold=0.99))
    assert loose and all(d.score >= 0.99 for d in strict) and len(strict) < len(loose)


def test_detect_cancellation_propagates_and_restores_mode():
    image, mask = breast_like((420, 300), seed=5)
    model = small_detector("mobilenet_v2")
    model.train()

    def cancel(fraction: float, message: str) -> None:
        if fraction > 0:
            raise CancelledError("user cancelled")

    try:
        with pytest.raises(CancelledError):
            detect(canonical_image(image, mask), model, tiling_spec(), batch_size=1, progress=cancel)
        assert model.training  # the caller's mode is restored
    finally:
        model.eval()


def test_detect_on_an_empty_mask_returns_nothing():
    image = np.zeros((300, 300), dtype=np.float32)
    dets = detect(
        canonical_image(image, np.zeros_like(image, dtype=bool)), small_detector("mobilenet_v2"), tiling_spec()
    )
    assert dets == []


def test_a_weak_box_enclosing_a_strong_one_does_not_move_it():
    # A confident lesion box and a weak, much larger box around it (context, or a neighbouring
    # group): the lesion keeps its own box and score. Growing it to the union, as an earlier
    # version did, moved the box's centre off the lesion at low thresholds.
    outputs = [
        {
            "boxes": np.array([[100.0, 100, 130, 130], [90, 40, 260, 170], [300, 300, 340, 340]]),
            "scores": np.array([0.95, 0.1, 0.5]),
            "p_malignant": np.array([0.9, 0.4, 0.2]),
        }
    ]
    dets = merge_tile_outputs(outputs, [(0, 0)], tile=512, image_shape=(512, 512), score_threshold=0.05)
    lesion = max(dets, key=lambda d: d.score)
    assert lesion.box.tolist() == [100.0, 100.0, 130.0, 130.0]
    assert (lesion.score, lesion.p_malignant, lesion.label) == (0.95, 0.9, "malignant")
    assert any(d.box.tolist() == [300.0, 300.0, 340.0, 340.0] for d in dets)  # separate lesion kept


def test_fragment_yielding_to_a_weaker_whole_box_survives_a_threshold_between_them():
    # Tile 0 (x 0-512) sees a confident fragment of a lesion at x 490-540; tile 1 (x 384-896)
    # sees it whole but less surely. Reported at 0.5, the lesion must still be there, whole.
    outputs = [
        {"boxes": np.array([[490.0, 200, 512, 230]]), "scores": np.array([0.9]), "p_malignant": np.array([0.2])},
        {"boxes": np.array([[105.0, 199, 157, 231]]), "scores": np.array([0.3]), "p_malignant": np.array([0.7])},
    ]
    dets = merge_tile_outputs(outputs, list(TWO_TILES), tile=512, image_shape=SHAPE, score_threshold=0.5)
    # Whole extent from tile 1; score and class from the more confident view, the fragment.
    assert [(d.box.tolist(), d.score, d.p_malignant) for d in dets] == [([489.0, 199.0, 541.0, 231.0], 0.9, 0.2)]


def test_a_large_box_covering_a_fragment_neither_replaces_it_nor_takes_its_score():
    # Tile 0 sees a confident fragment at x 490-512. Tile 1 sees two malignant lesions and a
    # weak benign box around them that also covers the fragment: clipped to tile 0 it does not
    # look like the fragment, so it is not that lesion's whole view. It must not inherit 0.9
    # and then swallow the two lesions inside it.
    outputs = [
        {"boxes": np.array([[490.0, 200, 512, 230]]), "scores": np.array([0.9]), "p_malignant": np.array([0.2])},
        {
            "boxes": np.array([[46.0, 150, 256, 330], [136, 160, 176, 200], [196, 260, 236, 300]]),
            "scores": np.array([0.3, 0.85, 0.8]),
            "p_malignant": np.array([0.1, 0.95, 0.9]),
        },
    ]
    dets = merge_tile_outputs(outputs, list(TWO_TILES), tile=512, image_shape=SHAPE, score_threshold=0.05)
    assert [(d.box.tolist(), d.score, d.label) for d in dets] == [
        ([490.0, 200.0, 512.0, 230.0], 0.9, "benign"),
        ([520.0, 160.0, 560.0, 200.0], 0.85, "malignant"),
        ([580.0, 260.0, 620.0, 300.0], 0.8, "malignant"),
    ]  # the weak box encloses several stronger ones: dropped


def test_thresholds_below_the_merge_floor_report_what_the_floor_reports():
    # A weak whole box (0.03) below the floor must not take part in merging at a lower threshold
    # either, or the lesions above the floor would change with the threshold.
    outputs = [
        {"boxes": np.array([[490.0, 200, 512, 230]]), "scores": np.array([0.9]), "p_malignant": np.array([0.2])},
        {"boxes": np.array([[105.0, 199, 157, 231]]), "scores": np.array([0.03]), "p_malignant": np.array([0.7])},
    ]
    at = {
        t: [
            (d.box.tolist(), d.score)
            for d in merge_tile_outputs(outputs, list(TWO_TILES), tile=512, image_shape=SHAPE, score_threshold=t)
        ]
        for t in (0.0, 0.02, MERGE_FLOOR, 0.3)
    }
    assert at[0.0] == at[0.02] == at[MERGE_FLOOR] == at[0.3] == [([490.0, 200.0, 512.0, 230.0], 0.9)]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), threshold=st.floats(0.05, 0.95))
@example(seed=12, threshold=0.3).via("fails when the threshold is applied before merging")
@example(seed=6, threshold=0.5).via("fails when the threshold is applied before merging")
@example(seed=5, threshold=0.7).via("fails when the threshold is applied before merging")
def test_a_higher_threshold_only_filters_the_merged_lesions(seed, threshold):
    # What evaluation's FROC sweep and the Slicer threshold slider rely on: the lesions at
    # threshold t are exactly the low-threshold lesions scoring >= t (same boxes, same scores).
    rng = np.random.default_rng(seed)
    origins = [(0, 0), (0, 384), (384, 0), (384, 384)]
    outputs = []
    for _ in origins:
        n = int(rng.integers(0, 12))
        xy = rng.uniform(0, 480, (n, 2))
        wh = rng.uniform(4, 160, (n, 2))
        outputs.append(
            {
                "boxes": np.concatenate([xy, np.minimum(xy + wh, 512)], axis=1),
                "scores": rng.uniform(0.01, 1.0, n),
                "p_malignant": rng.uniform(0, 1, n),
            }
        )
    low = merge_tile_outputs(outputs, origins, tile=512, image_shape=(896, 896), score_threshold=0.05)
    high = merge_tile_outputs(outputs, origins, tile=512, image_shape=(896, 896), score_threshold=threshold)
    expected = [(d.box.tolist(), d.score, d.p_malignant) for d in low if d.score >= threshold]
    assert [(d.box.tolist(), d.score, d.p_malignant) for d in high] == expected


def test_weak_box_around_two_lesions_does_not_merge_them():
    outputs = [
        {
            "boxes": np.array([[100.0, 100, 130, 130], [200, 100, 230, 130], [90, 90, 240, 140]]),
            "scores": np.array([0.9, 0.8, 0.4]),
            "p_malignant": np.array([0.9, 0.2, 0.5]),
        }
    ]
    dets = merge_tile_outputs(outputs, [(0, 0)], tile=512, image_shape=(512, 512), score_threshold=0.3)
    assert sorted(tuple(d.box.tolist()) for d in dets) == [(100.0, 100.0, 130.0, 130.0), (200.0, 100.0, 230.0, 130.0)]


def test_boxes_centred_off_the_breast_mask_are_dropped():
    mask = np.zeros((100, 80), dtype=bool)
    mask[:, :40] = True  # breast on the left half; the right half is air / label / film border
    dets = [
        Detection(np.array([10.0, 10.0, 30.0, 30.0]), "malignant", 0.9, 0.8),  # inside
        Detection(np.array([30.0, 50.0, 48.0, 60.0]), "benign", 0.8, 0.2),  # straddles, centre x=39 inside
        Detection(np.array([35.0, 50.0, 55.0, 60.0]), "benign", 0.95, 0.1),  # centre x=45: off the mask
        Detection(np.array([60.0, 0.0, 80.0, 10.0]), "malignant", 0.99, 0.9),  # in the air
    ]
    out = {
        "boxes": np.array([d.box for d in dets]),
        "scores": np.array([d.score for d in dets]),
        "p_malignant": np.array([d.p_malignant for d in dets]),
    }
    kept = merge_tile_outputs([out], [(0, 0)], tile=100, image_shape=(100, 80), score_threshold=0.3, mask=mask)
    assert [d.score for d in kept] == [0.9, 0.8]


def test_an_off_mask_box_cannot_suppress_the_breast_box_it_overlaps():
    mask = np.zeros((200, 200), dtype=bool)
    mask[:, :100] = True
    # One tile: a strong box centred just off the breast overlaps a weaker box on the breast.
    out = {
        "boxes": np.array([[80.0, 50.0, 140.0, 90.0], [70.0, 50.0, 110.0, 90.0]]),
        "scores": np.array([0.99, 0.6]),
        "p_malignant": np.array([0.9, 0.4]),
    }
    without = merge_tile_outputs([out], [(0, 0)], tile=200, image_shape=(200, 200), score_threshold=0.3)
    assert [d.score for d in without] == [0.99]  # NMS keeps the off-mask box only
    kept = merge_tile_outputs([out], [(0, 0)], tile=200, image_shape=(200, 200), score_threshold=0.3, mask=mask)
    assert [d.score for d in kept] == [0.6]
