"""The out-of-distribution signal: input statistics, the feature descriptor captured during
detection, the reference file, and the pipeline filling ``ImageFindings.ood``.

Real torch, the real bundled model and real CBIS-DDSM film crops; no mocks.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from _detect_helpers import PLAIN_MODEL
from _ood_helpers import CBIS_SPACING_MM, crops, film, model_folder
from conftest import SAMPLES
from scipy.ndimage import gaussian_filter

from MicrocalcAI.core.detect.manifest import MANIFEST_NAME, load_manifest, resolve_model
from MicrocalcAI.core.errors import ChecksumError, ModelError
from MicrocalcAI.core.ood.reference import (
    check_image,
    feature_distance,
    fit_reference,
    load_reference,
    read_reference,
)
from MicrocalcAI.core.ood.statistics import bits_used, breast_windows, input_statistics, noise_and_sharpness
from MicrocalcAI.core.pipeline import Analyzer

# ----------------------------------------------------------------------------- statistics


def _smooth_breast(shape=(600, 500), seed=0) -> np.ndarray:
    """Smooth tissue-like structure (no pixel-scale noise) in [0.2, 0.8]."""
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=shape), 12)
    field = (field - field.min()) / np.ptp(field)
    return 0.2 + 0.6 * field


@pytest.mark.parametrize("sigma", [0.005, 0.02, 0.05])
def test_noise_measures_known_added_noise(sigma):
    base = _smooth_breast()
    noisy = base + np.random.default_rng(1).normal(0.0, sigma, base.shape)
    mask = np.ones(base.shape, bool)
    measured = noise_and_sharpness(noisy, breast_windows(mask))["noise"]
    assert measured == pytest.approx(sigma, rel=0.1)


def test_noise_against_grey_level_sees_signal_dependent_noise():
    base = np.tile(np.linspace(0.1, 0.9, 500), (600, 1)) + 0.1 * _smooth_breast() - 0.05  # dark to bright
    rng = np.random.default_rng(2)
    flat = base + rng.normal(0.0, 0.02, base.shape)
    quantum = base + rng.normal(size=base.shape) * 0.04 * base  # noise grows with grey level
    mask = np.ones(base.shape, bool)
    assert noise_and_sharpness(flat, breast_windows(mask))["noise_grey_slope"] == pytest.approx(1.0, abs=0.1)
    assert noise_and_sharpness(quantum, breast_windows(mask))["noise_grey_slope"] > 1.8


def test_sharpness_drops_with_blur(cbis_cases):
    m = film(cbis_cases[0]["rcc"])
    window = m.pixels[1500:2500, 800:1600].astype(np.float64)
    window = (window - window.min()) / np.ptp(window)
    mask = np.ones(window.shape, bool)
    corners = breast_windows(mask)
    values = [noise_and_sharpness(gaussian_filter(window, s) if s else window, corners)["sharpness"] for s in (0, 1, 3)]
    assert values[0] > values[1] > values[2]
    assert values[2] < 0.5 * values[0]


def test_bits_used_counts_distinct_values_not_the_container():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4096, size=(200, 200)).astype(np.uint16)
    mask = np.ones(pixels.shape, bool)
    assert bits_used(pixels, mask) == pytest.approx(12.0, abs=0.05)
    four_bit = (pixels // 256) * 256  # 16 levels in a 16-bit container
    assert bits_used(four_bit, mask) == pytest.approx(4.0)
    stats = input_statistics(four_bit, four_bit / 4095.0, mask, (0.1, 0.1))
    assert stats["bits_used"] == pytest.approx(4.0)
    assert stats["breast_area_cm2"] == pytest.approx(200 * 200 * 0.01 / 100)
    assert stats["spacing_mm"] == pytest.approx(0.1)


# ----------------------------------------------------------------------------- reference + pipeline


@pytest.fixture(scope="module")
def fitted(cbis_cases, tmp_path_factory):
    """A small reference for the bundled model, fitted here: training-like = crops of the
    films' training views (the model's real backgrounds), threshold on other crops."""
    analyzer = Analyzer(PLAIN_MODEL, "cpu")
    assert analyzer.ood_reference is None  # 0.2.1 ships none
    train = crops(film(cbis_cases[0]["rcc"]), 3) + crops(film(cbis_cases[1]["lmlo"]), 3)
    val = crops(film(cbis_cases[0]["lmlo"]), 2) + crops(film(cbis_cases[1]["rcc"]), 2)
    train_m = [analyzer.measure_ood(m) for m in train]
    val_m = [analyzer.measure_ood(m) for m in val]
    assert all(d is not None and d.ndim == 1 for _, d in train_m + val_m)
    reference = fit_reference(
        [s for s, _ in train_m],
        np.stack([d for _, d in train_m]),
        [s for s, _ in val_m],
        np.stack([d for _, d in val_m]),
        model_sha256=analyzer.spec.sha256,
    )
    folder = model_folder(tmp_path_factory.mktemp("ood_model"), analyzer.spec, reference)
    return analyzer, reference, folder, train


def test_model_without_reference_gives_no_ood():
    findings = Analyzer(PLAIN_MODEL, "cpu").analyse(SAMPLES / "sim_R_CC.dcm")
    assert findings.ood is None


def test_blurred_and_four_bit_images_are_flagged_the_original_is_not(fitted, cbis_cases):
    _, reference, folder, _ = fitted
    analyzer = Analyzer(str(folder), "cpu")
    assert analyzer.ood_reference is not None
    original = crops(film(cbis_cases[0]["rcc"]), 1, offset=2)[0]  # a window between the training ones
    blurred = replace(
        original, pixels=gaussian_filter(original.pixels.astype(np.float32), 0.5 / CBIS_SPACING_MM).astype(np.uint16)
    )
    p = original.pixels.astype(np.int64)
    step = (p.max() - p.min()) / 15
    four_bit = replace(original, pixels=(np.round((p - p.min()) / step) * step + p.min()).astype(np.uint16))

    results = {
        name: analyzer.analyse(m, name=name)
        for name, m in (("original", original), ("blurred", blurred), ("4-bit", four_bit))
    }
    ok = results["original"].ood
    assert ok is not None and not ok.flagged, ok
    assert ok.threshold == pytest.approx(reference.threshold)
    assert "feature_distance" in ok.measurements and "noise" in ok.measurements
    for name in ("blurred", "4-bit"):
        check = results[name].ood
        assert check is not None and check.flagged and check.score >= check.threshold, (name, check)
        assert check.reasons, name
        # the pipeline hands its check to the risk: a flagged image is indeterminate
        assert results[name].risk.category == "indeterminate", (name, results[name].risk)
    assert results["original"].risk.category != "indeterminate"
    assert any("bits" in r for r in results["4-bit"].ood.reasons)
    assert any("sharpness" in r or "noise" in r for r in results["blurred"].ood.reasons)
    assert "ood_statistics" in results["original"].timings_s


def test_reference_round_trips_and_scores_exactly(fitted, tmp_path):
    _, reference, folder, _ = fitted
    again = read_reference(folder / "model.ood.npz")
    assert again.threshold == reference.threshold and again.ranges == reference.ranges
    probe = reference.mean + reference.components[0] * 3.0
    assert feature_distance(again, probe) == pytest.approx(feature_distance(reference, probe), rel=1e-12)
    # Known geometry: along a principal direction the residual is zero and the distance is
    # the Mahalanobis distance alone: sqrt(z^T P z / (2k)).
    z = reference.components @ (probe - reference.mean)
    k = reference.components.shape[0]
    assert feature_distance(reference, probe) == pytest.approx(np.sqrt(z @ reference.precision @ z / k / 2), rel=1e-9)


def test_reference_with_wrong_sha256_is_a_clear_model_error(fitted, tmp_path):
    _, _, folder, _ = fitted
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["models"][0]["ood"]["sha256"] = "0" * 64
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    (tmp_path / "model.ood.npz").write_bytes((folder / "model.ood.npz").read_bytes())
    _, specs = load_manifest(tmp_path)
    with pytest.raises(ChecksumError, match="OOD reference .* does not match"):
        load_reference(specs[0])
    with pytest.raises(ModelError):
        Analyzer(str(tmp_path), "cpu")


def test_reference_of_other_weights_is_refused(fitted, tmp_path):
    _, reference, _, _ = fitted
    folder = model_folder(tmp_path, resolve_model(PLAIN_MODEL), replace(reference, model_sha256="f" * 64))
    _, specs = load_manifest(folder)
    with pytest.raises(ModelError, match="fitted for weights"):
        load_reference(specs[0])


def test_statistics_outside_training_range_flag_without_features(fitted):
    _, reference, _, _ = fitted
    inside = {name: (lo + min(hi, lo * 4)) / 2 for name, (lo, hi) in reference.ranges.items()}
    assert not check_image(reference, inside, None).flagged
    coarse = dict(inside, spacing_mm=reference.ranges["spacing_mm"][1] * 2)
    check = check_image(reference, coarse, None)
    assert check.flagged and check.score == pytest.approx(reference.threshold * 2.0)
    assert any("spacing" in r for r in check.reasons)


def test_manifest_without_ood_block_loads_unchanged():
    _, specs = load_manifest()
    by_name = {s.name: s for s in specs}
    assert by_name[PLAIN_MODEL].ood is None  # 0.2.1's entry was written without one
    assert "ood" not in by_name[PLAIN_MODEL].to_json()
    shipped = resolve_model(None)  # the default ships its reference; the block round-trips
    assert shipped.ood is not None and shipped.to_json()["ood"] == shipped.ood


def test_cli_fits_a_reference_into_an_existing_manifest(tmp_path):
    """``microcalcai ood-reference`` on COCO files: the entry gains its ``ood`` block (and
    nothing else changes), the side file verifies, and the Analyzer then fills ``ood``."""
    from _simulate_helpers import realistic_small

    from MicrocalcAI.cli import main
    from MicrocalcAI.simulation.simulate import simulate_dataset

    train = simulate_dataset(tmp_path / "train", realistic_small(n_images=4, seed=21, real_fraction=0.0))
    val = simulate_dataset(tmp_path / "val", realistic_small(n_images=2, seed=22, real_fraction=0.0))
    spec = resolve_model(PLAIN_MODEL)
    folder = tmp_path / "models"
    folder.mkdir()
    entry = spec.to_json() | {"file": str(spec.weights_path.resolve())}
    (folder / MANIFEST_NAME).write_text(json.dumps({"schema_version": 1, "default": spec.name, "models": [entry]}))

    assert (
        main(["ood-reference", str(folder), "--train", str(train), "--val", str(val), "--device", "cpu", "--quiet"])
        == 0
    )
    written = json.loads((folder / MANIFEST_NAME).read_text())["models"][0]
    assert {k: v for k, v in written.items() if k != "ood"} == entry
    assert written["ood"]["file"] == f"{spec.weights_path.stem}.ood.npz"
    _, specs = load_manifest(folder)
    reference = load_reference(specs[0])
    assert reference is not None and reference.info["n_train"] == 4 and reference.info["n_val"] == 2
    findings = Analyzer(str(folder), "cpu").analyse(SAMPLES / "sim_R_CC.dcm")
    assert findings.ood is not None and findings.ood.threshold == pytest.approx(reference.threshold)


def test_descriptor_is_the_same_from_the_torch_and_onnx_backbones():
    """The hook sits on ``model.backbone``, which the ONNX Runtime backend replaces by a
    module returning the same feature levels: both give the same descriptor."""
    pytest.importorskip("onnxruntime")
    from MicrocalcAI.core.ood.features import capture_features
    from MicrocalcAI.core.runtime import cached_detector

    analyzer = Analyzer(PLAIN_MODEL, "cpu")
    prepared = analyzer.prepare(SAMPLES / "sim_R_CC.dcm")
    spec = analyzer.spec
    descriptors = {}
    for backend in ("torch", "onnxruntime"):
        model = cached_detector(spec, "cpu", backend=backend)
        with capture_features(model, prepared.canonical.mask, spec.tile_size, spec.tile_overlap) as got:
            from MicrocalcAI.core.detect.run import detect

            detect(prepared.canonical, model, spec)
        descriptors[backend] = got.descriptor()
    torch_d, onnx_d = descriptors["torch"], descriptors["onnxruntime"]
    assert torch_d is not None and onnx_d is not None
    assert np.abs(torch_d - onnx_d).max() <= 1e-3 * np.abs(torch_d).max()


def test_run_batch_fills_ood_in_process_and_on_dask(fitted, tmp_path):
    """The batch paths build their Analyzer from the model path (Dask: on each worker), so the
    reference travels with the model and every image gets its check."""
    from MicrocalcAI.core.batch import run_batch
    from MicrocalcAI.core.distributed import cluster_client

    _, reference, folder, _ = fitted
    local = run_batch([SAMPLES / "sim_R_CC.dcm"], tmp_path / "local", model=str(folder), device="cpu")
    with cluster_client(workers=1) as client:
        remote = run_batch(
            [SAMPLES / "sim_R_CC.dcm"], tmp_path / "dask", model=str(folder), device="cpu", client=client
        )
    for result in (local, remote):
        assert len(result.images) == 1 and not result.failed
        check = result.images[0].ood
        assert check is not None and check.threshold == pytest.approx(reference.threshold)
    assert remote.images[0].ood.score == pytest.approx(local.images[0].ood.score, rel=1e-3)
