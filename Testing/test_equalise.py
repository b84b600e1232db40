"""Noise equalisation: the same pixel noise on every image, a speck's contrast-to-noise kept,
the tissue left in place; and the setting travels from training config to manifest to inference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _standardise_helpers import synthetic_mammogram
from scipy import ndimage

from MicrocalcAI.core.detect.manifest import ModelSpec, load_manifest
from MicrocalcAI.core.equalise import NoiseEqualisation, equalise_noise, noise_curve
from MicrocalcAI.core.errors import InputError, ModelError
from MicrocalcAI.core.noise import breast_windows, window_noise
from MicrocalcAI.core.standardise import normalised_stored, standardise
from MicrocalcAI.training.config import TrainConfig, TrainConfigError, model_config

SPACING = 0.1
SPECK = (400, 300)  # stored (row, col) of the inserted speck, inside the breast


def _film(noise_sd: float, seed: int = 0, speck: float = 0.0) -> np.ndarray:
    """A smooth breast (dense at the chest wall) with white noise of ``noise_sd`` x 10000 grey
    levels and optionally one 3-pixel speck of ``speck`` x 10000 above the tissue."""
    rows, cols = 800, 600
    yy, xx = np.mgrid[0:rows, 0:cols]
    breast = (xx / (0.8 * cols)) ** 2 + ((yy - rows / 2) / (0.45 * rows)) ** 2 <= 1.0
    tissue = 4000.0 + 6000.0 * np.clip(1.0 - xx / (0.8 * cols), 0.0, 1.0)
    image = np.where(breast, tissue, 0.0)
    rng = np.random.default_rng(seed)
    image = image + np.where(breast, rng.normal(0.0, noise_sd * 10000.0, image.shape), 0.0)
    r, c = SPECK
    image[r - 1 : r + 2, c - 1 : c + 2] += np.where(breast[r - 1 : r + 2, c - 1 : c + 2], speck * 10000.0, 0.0)
    return np.clip(np.round(image), 0, 65535).astype(np.uint16)


def _canonical_noise(image: np.ndarray, mask: np.ndarray) -> float:
    corners = breast_windows(mask)
    return float(np.median([window_noise(image[r : r + 64, c : c + 64]) for r, c in corners]))


def _speck_height(canonical) -> float:
    """Canonical speck peak above the median of its 2 mm surroundings."""
    ((r, c),) = np.round(canonical.transform.to_canonical_points(np.array([[SPECK[1] + 0.5, SPECK[0] + 0.5]]))[:, ::-1])
    r, c = int(r), int(c)
    around = canonical.image[r - 10 : r + 11, c - 10 : c + 11]
    return float(canonical.image[r - 1 : r + 2, c - 1 : c + 2].max() - np.median(around))


def test_every_noise_level_comes_out_at_the_target_and_contrast_to_noise_is_kept() -> None:
    ne = NoiseEqualisation(target_noise=0.004)
    before, after, cnr_before, cnr_after = [], [], [], []
    for sd in (0.002, 0.006):
        m = synthetic_mammogram(_film(sd, speck=6 * sd), SPACING)
        plain, equalised = standardise(m), standardise(m, noise_equalisation=ne)
        before.append(_canonical_noise(plain.image, plain.mask))
        after.append(_canonical_noise(equalised.image, equalised.mask))
        cnr_before.append(_speck_height(plain) / before[-1])
        cnr_after.append(_speck_height(equalised) / after[-1])
        # the tissue stays where it was: only the detail around the background is rescaled
        assert abs(float(equalised.image[equalised.mask].mean()) - float(plain.image[plain.mask].mean())) < 0.01
    assert before[1] / before[0] > 2.5  # the inputs differ threefold in noise ...
    assert after == pytest.approx([0.004, 0.004], rel=0.2)  # ... the outputs do not
    # contrast-to-noise of the speck survives equalisation on both
    assert cnr_after == pytest.approx(cnr_before, rel=0.2)


def test_gain_is_clipped_and_nothing_leaves_the_breast_or_the_unit_range() -> None:
    ne = NoiseEqualisation(target_noise=0.004, max_gain=2.0, min_gain=0.5)
    quiet = synthetic_mammogram(_film(0.0005), SPACING)
    plain, equalised = standardise(quiet), standardise(quiet, noise_equalisation=ne)
    ratio = _canonical_noise(equalised.image, equalised.mask) / _canonical_noise(plain.image, plain.mask)
    assert ratio == pytest.approx(2.0, rel=0.15)  # gain 8 wanted, 2 allowed
    assert equalised.image.min() >= 0.0 and equalised.image.max() <= 1.0
    assert not equalised.image[~equalised.mask].any()
    # no bright rim at the skin line: the background is taken from the breast alone
    edge = equalised.mask & ~ndimage.binary_erosion(equalised.mask, iterations=3)
    assert edge.sum() > 100
    # (0.025 here, from the tissue's own gradient doubled; a background taking in the air
    # around the breast gives 0.08 on this image)
    assert abs(float(equalised.image[edge].mean() - plain.image[edge].mean())) < 0.04


def test_noise_curve_follows_grey_level_and_is_none_without_windows() -> None:
    rows, cols = 400, 400
    rng = np.random.default_rng(1)
    grey = np.tile(np.linspace(0.2, 0.8, cols, dtype=np.float32), (rows, 1))
    image = grey + rng.normal(0.0, 1.0, (rows, cols)).astype(np.float32) * (0.002 + 0.01 * grey)
    mask = np.ones((rows, cols), dtype=bool)
    curve = noise_curve(image, mask, NoiseEqualisation(grey_groups=4))
    assert curve is not None and np.all(np.diff(curve.grey) > 0)
    assert curve.noise[-1] / curve.noise[0] > 1.8  # noisier where brighter, as generated
    tiny = np.zeros((rows, cols), dtype=bool)
    tiny[10:40, 10:40] = True
    assert noise_curve(image, tiny, NoiseEqualisation()) is None
    unchanged = image.copy()
    assert equalise_noise(unchanged, mask, SPACING, None, NoiseEqualisation()) is unchanged
    np.testing.assert_array_equal(unchanged, image)


def test_a_breast_too_small_to_measure_is_left_as_it_is_with_a_warning() -> None:
    # a breast of 24 x 50 mm scanned at 0.4 mm: 60 x 125 pixels, no 64-pixel window inside it
    rows, cols = 200, 160
    yy, xx = np.mgrid[0:rows, 0:cols]
    small = (xx / 60.0) ** 2 + ((yy - rows / 2) / 62.0) ** 2 <= 1.0
    noise = np.random.default_rng(3).integers(0, 50, (rows, cols))
    m = synthetic_mammogram(np.where(small, 8000 - 20 * xx + noise, 0).astype(np.uint16), 0.4)
    plain, equalised = standardise(m), standardise(m, noise_equalisation=NoiseEqualisation())
    np.testing.assert_array_equal(equalised.image, plain.image)
    assert any("noise equalisation skipped" in w for w in equalised.warnings)
    assert not any("noise equalisation" in w for w in plain.warnings)


def test_standardise_leaves_the_callers_stored_image_alone() -> None:
    m = synthetic_mammogram(_film(0.004), SPACING)
    stored = normalised_stored(m)
    copy = stored[0].copy()
    standardise(m, stored=stored, noise_equalisation=NoiseEqualisation())
    np.testing.assert_array_equal(stored[0], copy)


@pytest.mark.parametrize(
    "bad",
    [
        {"target_noise": 0},
        {"min_gain": 3, "max_gain": 2},
        {"grey_groups": 0},
        {"grey_groups": 4.7},
        {"surprise": 1},
        "yes",
        {"max_gain": "x"},
        {"max_gain": True},
        {"target_noise": float("inf")},
    ],
)
def test_bad_settings_are_clear_errors(bad) -> None:
    with pytest.raises(InputError, match="noise_equalisation|noise equalisation"):
        NoiseEqualisation.from_json(bad)


def _manifest(folder: Path, entry: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"models": [entry]}))
    return folder


def test_the_setting_round_trips_through_the_manifest_and_bad_ones_are_model_errors(tmp_path) -> None:
    ne = NoiseEqualisation(target_noise=0.005, background_sigma_mm=0.7)
    spec = ModelSpec(name="m", version="1", file="w.safetensors", sha256="00", backbone="mobilenet_v2")
    assert "noise_equalisation" not in spec.to_json()  # entries without it stay as written
    spec.noise_equalisation = ne
    _, (loaded,) = load_manifest(_manifest(tmp_path / "a", spec.to_json()))
    assert loaded.noise_equalisation == ne
    _, (off,) = load_manifest(_manifest(tmp_path / "c", dict(spec.to_json(), noise_equalisation=False)))
    assert off.noise_equalisation is None
    bad = dict(spec.to_json(), noise_equalisation={"target_noise": -1})
    with pytest.raises(ModelError, match="noise"):
        load_manifest(_manifest(tmp_path / "b", bad))


def test_training_config_records_the_setting_only_when_on(tmp_path) -> None:
    base = {"train_coco": "t.json", "output_dir": "out"}
    off = TrainConfig.from_dict(base)
    on = TrainConfig.from_dict(dict(base, noise_equalisation=True))
    assert off.noise_equalisation is None and on.noise_equalisation == NoiseEqualisation()
    assert TrainConfig.from_dict(dict(base, noise_equalisation=False)).noise_equalisation is None
    assert "noise_equalisation" not in model_config(off)  # older checkpoints still resume
    assert model_config(on)["noise_equalisation"] == NoiseEqualisation().to_json()
    assert TrainConfig.from_dict(on.to_dict()).noise_equalisation == on.noise_equalisation
    with pytest.raises(TrainConfigError, match="noise"):
        TrainConfig.from_dict(dict(base, noise_equalisation={"max_gain": 0}))


def test_weights_record_the_setting_and_a_manifest_that_disagrees_is_refused(tmp_path) -> None:
    """A hand-written entry that drops (or adds) the setting would feed the network input it
    was never trained on: the weights file says what it was trained with."""
    from dataclasses import replace

    from _detect_helpers import SMALL_OVERLAP, SMALL_TILE, small_detector, small_detector_config, small_spec

    from MicrocalcAI.core.detect.weights import load_detector, save_weights

    model, ne = small_detector("mobilenet_v2"), NoiseEqualisation()
    path = tmp_path / "equalised.safetensors"
    digest = save_weights(model, path, replace(small_detector_config(), noise_equalisation=ne.to_json()))
    spec = ModelSpec(
        name="m",
        version="0",
        file=path.name,
        sha256=digest,
        backbone="mobilenet_v2",
        tile_size=SMALL_TILE,
        tile_overlap=SMALL_OVERLAP,
        folder=str(tmp_path),
        noise_equalisation=ne,
    )
    assert load_detector(spec) is not None
    with pytest.raises(ModelError, match="trained with noise equalisation"):
        load_detector(replace(spec, noise_equalisation=None))
    with pytest.raises(ModelError, match="trained with noise equalisation"):
        load_detector(replace(spec, noise_equalisation=NoiseEqualisation(target_noise=0.01)))
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    with pytest.raises(ModelError, match="without noise equalisation"):
        load_detector(small_spec(plain_dir, model, noise_equalisation=ne))
