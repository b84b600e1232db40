"""Speck segmentation (MicrocalcAI.core.findings.specks) and lesion records (MicrocalcAI.core.findings.lesions)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from findings_fixtures import synthetic_mammogram_patch

from MicrocalcAI.core.errors import InputError, MicrocalcAIError, SpacingError
from MicrocalcAI.core.findings.lesions import build_lesions
from MicrocalcAI.core.findings.specks import SpeckConfig, box_window, segment_specks, speck_tophat

# (x mm, y mm, diameter mm): sizes across the microcalcification range.
TRUTH = [(5.0, 5.0, 0.4), (10.0, 6.0, 0.6), (14.0, 14.0, 0.3), (6.0, 15.0, 0.8), (15.0, 4.0, 0.2)]
SPACINGS = [(0.1, 0.1), (0.05, 0.05), (0.05, 0.1)]


def _patch(spacing, specks=TRUTH, **kw):
    shape = (int(round(20 / spacing[0])), int(round(20 / spacing[1])))
    return synthetic_mammogram_patch(shape, spacing, specks, **kw)


def _box_mm(spacing, x0=2.0, y0=2.0, x1=18.0, y1=18.0):
    return [x0 / spacing[1], y0 / spacing[0], x1 / spacing[1], y1 / spacing[0]]


def _match(specks, spacing, truth):
    """For each true speck, the found speck closest to it (in mm) and the distance."""
    found = [(s.centroid_px[0] * spacing[1], s.centroid_px[1] * spacing[0], s) for s in specks]
    out = []
    for x, y, d in truth:
        dist, best = min(((math.hypot(fx - x, fy - y), s) for fx, fy, s in found), key=lambda t: t[0])
        out.append((dist, best, d))
    return out


@pytest.mark.parametrize("spacing", SPACINGS, ids=["0.1mm", "0.05mm", "aniso0.05x0.1"])
def test_known_specks_count_position_and_size(spacing):
    img = _patch(spacing)
    mask, origin, specks = segment_specks(img, _box_mm(spacing), spacing)
    assert origin == (int(2 / spacing[0]), int(2 / spacing[1]))
    assert mask.shape == (int(16 / spacing[0]), int(16 / spacing[1])) and mask.dtype == bool
    assert len(specks) == len(TRUTH)
    tol_d = 0.5 * max(spacing) + 0.03
    for dist, speck, d in _match(specks, spacing, TRUTH):
        assert dist < 0.05, "centroid off by more than 0.05 mm"
        assert abs(speck.diameter_mm - d) <= tol_d
        assert speck.area_mm2 == pytest.approx(speck.area_px * spacing[0] * spacing[1])
        assert speck.diameter_mm == pytest.approx(2 * math.sqrt(speck.area_mm2 / math.pi))
    # The mask is exactly the union of the reported specks.
    assert int(mask.sum()) == sum(s.area_px for s in specks)


def test_centroids_use_pixel_centre_convention():
    spacing = (0.1, 0.1)
    img = np.full((40, 40), 0.4, dtype=np.float32)
    img[10:13, 20:23] = 0.9  # 3x3 speck centred on pixel (row 11, col 21) -> x 21.5, y 11.5
    _, _, specks = segment_specks(img, [5, 5, 35, 35], spacing)
    assert len(specks) == 1
    assert specks[0].centroid_px == pytest.approx((21.5, 11.5))
    assert specks[0].area_px == 9


@pytest.mark.parametrize("spacing", SPACINGS, ids=["0.1mm", "0.05mm", "aniso0.05x0.1"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_noise_and_smooth_background_give_no_specks(spacing, seed):
    img = _patch(spacing, specks=[], noise=0.02, gradient=0.5, seed=seed)
    mask, _, specks = segment_specks(img, _box_mm(spacing, 0, 0, 20, 20), spacing)
    assert specks == [] and not mask.any()


def test_broad_bright_structures_are_not_specks():
    spacing = (0.1, 0.1)
    rr, cc = np.indices((200, 200))
    img = 0.3 + 0.4 * np.exp(-((rr - 100) ** 2 + (cc - 60) ** 2) / (2 * 40.0**2))  # dense tissue, sigma 4 mm
    img[(rr - 100) ** 2 + (cc - 150) ** 2 <= 15**2] += 0.3  # 3 mm bright mass
    img[:, 100:120] += 0.2  # a 2 mm wide band (a vessel broadside)
    mask, _, specks = segment_specks(img.astype(np.float32), [0, 0, 200, 200], spacing)
    assert specks == []


def test_tophat_element_is_round_in_millimetres_on_anisotropic_pixels():
    spacing = (0.05, 0.1)  # a pixel is twice as wide as it is tall
    cfg = SpeckConfig(denoise_sigma_mm=0.0)
    peaks = []
    for height_mm, width_mm in ((1.0, 1.6), (1.6, 1.0)):
        img = np.zeros((200, 100), dtype=np.float32)
        h, w = int(round(height_mm / spacing[0])), int(round(width_mm / spacing[1]))
        img[100 - h // 2 : 100 - h // 2 + h, 50 - w // 2 : 50 - w // 2 + w] = 0.5
        peaks.append(float(speck_tophat(img, spacing, cfg)[100, 50]))
    # Both bars are 1.0 mm across their narrow side, narrower than the 1.2 mm element in
    # every direction, so the top-hat keeps both whatever their orientation on the grid.
    assert peaks == [pytest.approx(0.5), pytest.approx(0.5)]
    # Bars 1.5 mm across (wider than the element) are background in either orientation.
    for height_mm, width_mm in ((1.5, 4.0), (4.0, 1.5)):
        img = np.zeros((200, 100), dtype=np.float32)
        h, w = int(round(height_mm / spacing[0])), int(round(width_mm / spacing[1]))
        img[100 - h // 2 : 100 - h // 2 + h, 50 - w // 2 : 50 - w // 2 + w] = 0.5
        assert float(speck_tophat(img, spacing, cfg)[100, 50]) == pytest.approx(0.0)


def test_gradient_at_the_image_border_is_not_a_speck():
    spacing = (0.1, 0.1)
    ramp = np.tile(np.linspace(0.0, 1.0, 100, dtype=np.float32), (100, 1))  # 0.1 per mm, brightest at the edge
    assert float(speck_tophat(ramp, spacing, SpeckConfig()).max()) < 1e-4
    for box in ([92, 40, 100, 48], [0, 40, 8, 48], [92, 0, 100, 4]):
        mask, _, specks = segment_specks(ramp, box, spacing)
        assert specks == [] and not mask.any()


def test_size_does_not_grow_with_contrast():
    spacing = (0.05, 0.05)
    diam = {}
    for contrast in (0.1, 0.6):
        img = _patch(spacing, specks=[(10.0, 10.0, 0.5)], contrast=contrast, noise=0.005)
        _, _, specks = segment_specks(img, _box_mm(spacing), spacing)
        assert len(specks) == 1
        diam[contrast] = specks[0].diameter_mm
    assert abs(diam[0.1] - diam[0.6]) <= spacing[0]


def test_faint_speck_below_min_contrast_is_ignored():
    spacing = (0.1, 0.1)
    img = _patch(spacing, specks=[(10.0, 10.0, 0.5)], contrast=0.02, noise=0.0)
    assert segment_specks(img, _box_mm(spacing), spacing)[2] == []
    cfg = SpeckConfig(min_contrast=0.01)
    assert len(segment_specks(img, _box_mm(spacing), spacing, config=cfg)[2]) == 1


def test_size_limits_from_config():
    spacing = (0.05, 0.05)
    img = _patch(spacing)
    _, _, specks = segment_specks(
        img, _box_mm(spacing), spacing, config=SpeckConfig(min_diameter_mm=0.35, max_diameter_mm=0.7)
    )
    assert sorted(round(s.diameter_mm, 1) for s in specks) == [0.4, 0.6]


def test_breast_mask_excludes_specks_outside():
    spacing = (0.1, 0.1)
    img = _patch(spacing)
    breast = np.zeros(img.shape, dtype=bool)
    breast[:, : int(8 / spacing[1])] = True  # only x < 8 mm is breast: specks at x 5 and 6 mm
    mask, origin, specks = segment_specks(img, _box_mm(spacing), spacing, breast_mask=breast)
    xs = sorted(round(s.centroid_px[0] * spacing[1]) for s in specks)
    assert xs == [5, 6]
    window = breast[origin[0] : origin[0] + mask.shape[0], origin[1] : origin[1] + mask.shape[1]]
    assert not (mask & ~window).any()


def test_box_window_clipping_at_image_borders():
    spacing = (0.1, 0.1)
    img = _patch(spacing, specks=[(0.3, 19.7, 0.5)])  # speck next to the bottom-left corner
    rows, cols = img.shape
    mask, origin, specks = segment_specks(img, [-10.3, 150.2, 30.7, rows + 25.0], spacing)
    assert origin == (150, 0)
    assert mask.shape == (rows - 150, 31)  # floor/ceil, clipped to the image
    assert len(specks) == 1
    x, y = specks[0].centroid_px
    assert x * spacing[1] == pytest.approx(0.3, abs=0.1) and y * spacing[0] == pytest.approx(19.7, abs=0.1)
    # Fractional box inside the image: the window covers partly covered pixels.
    assert box_window([10.2, 20.9, 30.0, 40.01], (rows, cols)) == (20, 10, 41, 30)
    # A box entirely outside the image gives an empty window and no specks.
    mask, origin, specks = segment_specks(img, [cols + 5, 10, cols + 20, 30], spacing)
    assert mask.size == 0 and specks == []


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"box_px": [10, 10, 5, 20]}, InputError),
        ({"box_px": [0, 0, float("nan"), 5]}, InputError),
        ({"box_px": [0, 0, 5]}, InputError),
        ({"spacing_mm": (0.0, 0.1)}, SpacingError),
        ({"config": SpeckConfig(tophat_diameter_mm=-1)}, InputError),
        ({"breast_mask": np.ones((3, 3), dtype=bool)}, InputError),
    ],
)
def test_bad_arguments_raise_microcalcai_errors(kwargs, error):
    args = {"box_px": [0, 0, 20, 20], "spacing_mm": (0.1, 0.1)} | kwargs
    img = np.zeros((50, 50), dtype=np.float32)
    with pytest.raises(error) as info:
        segment_specks(img, args.pop("box_px"), args.pop("spacing_mm"), **args)
    assert isinstance(info.value, MicrocalcAIError)


def test_typical_box_is_fast():
    spacing = (0.05, 0.05)
    img = synthetic_mammogram_patch((400, 400), spacing, [(10, 10, 0.4), (9, 8, 0.3)])
    box = [125, 125, 275, 275]  # 150 x 150 px
    segment_specks(img, box, spacing)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        segment_specks(img, box, spacing)
        times.append(time.perf_counter() - t)
    assert float(np.median(times)) < 0.05  # target 20 ms; slack for a busy 2-core CI machine


# --------------------------------------------------------------------------- build_lesions


def test_build_lesions_orders_numbers_clips_and_converts_to_mm():
    spacing = (0.05, 0.1)  # rows 0.05 mm, columns 0.1 mm
    img = _patch(spacing)
    rows, cols = img.shape
    boxes = np.array([[10, 20, 50, 60], [-5, 100, 40, rows + 10], [150, 30, 190, 90]], dtype=float)
    lesions = build_lesions(
        boxes, ["benign", "malignant", "malignant"], [0.9, 0.8, 0.7], [0.1, 0.95, 0.6], img, spacing
    )
    assert [les.id for les in lesions] == [1, 2, 3]
    assert [les.p_malignant for les in lesions] == [0.95, 0.6, 0.1]
    assert [les.label for les in lesions] == ["malignant", "malignant", "benign"]
    first = lesions[0]
    assert first.box_px == (0.0, 100.0, 40.0, float(rows))  # clipped to the image
    assert first.box_mm == pytest.approx((0.0, 100 * 0.05, 40 * 0.1, rows * 0.05))
    assert first.area_mm2 == pytest.approx(40 * 0.1 * (rows - 100) * 0.05)
    assert first.mask_origin == (100, 0) and first.speck_mask.shape == (rows - 100, 40)
    third = lesions[2]
    assert third.box_mm == pytest.approx((1.0, 1.0, 5.0, 3.0)) and third.area_mm2 == pytest.approx(8.0)


def test_build_lesions_finds_the_specks_of_each_box():
    spacing = (0.1, 0.1)
    img = _patch(spacing)
    # Around the specks at (5, 5) mm and (10, 6) mm, and one box with none.
    boxes = np.array([[40, 40, 60, 60], [90, 50, 110, 70], [100, 100, 120, 120]], dtype=float)
    lesions = build_lesions(boxes, ["benign"] * 3, [0.5] * 3, [0.3, 0.2, 0.1], img, spacing)
    assert [les.speck_count for les in lesions] == [1, 1, 0]
    assert lesions[0].specks[0].diameter_mm == pytest.approx(0.4, abs=0.08)


def test_build_lesions_drops_boxes_outside_and_rejects_bad_input():
    img = np.zeros((50, 50), dtype=np.float32)
    lesions = build_lesions(
        np.array([[60, 60, 70, 70], [1, 1, 5, 5]]), ["benign"] * 2, [0.5, 0.5], [0.9, 0.1], img, (0.1, 0.1)
    )
    assert [(les.id, les.p_malignant) for les in lesions] == [(1, 0.1)]
    assert build_lesions(np.zeros((0, 4)), [], [], [], img, (0.1, 0.1)) == []
    with pytest.raises(InputError):
        build_lesions(np.array([[1, 1, 5, 5]]), ["calcified"], [0.5], [0.5], img, (0.1, 0.1))
    with pytest.raises(InputError):
        build_lesions(np.array([[1, 1, 5, 5]]), ["benign", "benign"], [0.5], [0.5], img, (0.1, 0.1))
    with pytest.raises(InputError):
        build_lesions(np.array([[1, 1, 5, 5]]), ["benign"], [0.5], [1.5], img, (0.1, 0.1))


# --------------------------------------------------------------------------- cluster rule


def test_cluster_rule_keeps_clusters_and_drops_isolated_dots():
    # Issue 10: on real film most false marks sit on 1-3 isolated bright pixels (dust, grain).
    # A cluster is at least 3 specks within 1 cm^2; one speck, or three spread over 3 cm, is not.
    from MicrocalcAI.core.findings.lesions import ClusterRule, densest_speck_count

    spacing = (0.1, 0.1)
    cluster = [(5.0, 5.0, 0.4), (6.0, 5.5, 0.3), (5.5, 6.5, 0.4), (6.5, 6.8, 0.3)]  # 4 within ~2 mm
    single = [(25.0, 5.0, 0.4)]
    spread = [(5.0, 25.0, 0.4), (17.0, 25.0, 0.4), (29.0, 25.0, 0.4)]  # 12 mm apart
    shape = (int(32 / spacing[0]), int(34 / spacing[1]))
    img = synthetic_mammogram_patch(shape, spacing, cluster + single + spread)
    boxes = np.array([[35, 35, 80, 80], [235, 35, 265, 65], [30, 230, 310, 270]], dtype=float)
    args = (["malignant"] * 3, [0.9, 0.8, 0.7], [0.9, 0.8, 0.7], img, spacing)

    off = build_lesions(boxes, *args, cluster_rule=ClusterRule(min_specks=0))
    assert [les.speck_count for les in off] == [4, 1, 3]
    counts = [densest_speck_count(les.specks, spacing, 100.0) for les in off]
    assert counts == [4, 1, 1]  # 1 cm^2 is a circle of radius 5.6 mm: the spread specks are alone

    kept = build_lesions(boxes, *args, cluster_rule=ClusterRule(min_specks=3))
    assert [les.box_px for les in kept] == [tuple(boxes[0])]
    assert kept[0].id == 1
    # A 5 cm^2 window (radius 12.6 mm) sees all three spread specks together.
    wide = build_lesions(boxes, *args, cluster_rule=ClusterRule(min_specks=3, area_mm2=500.0))
    assert len(wide) == 2
    with pytest.raises(MicrocalcAIError):
        build_lesions(boxes, *args, cluster_rule=ClusterRule(min_specks=-1))
