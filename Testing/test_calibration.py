"""Calibration of lesion score and p_malignant: applied exactly, fitted correctly, stored in the
manifest, applied by detect() without changing which lesions a threshold reports, and measured
before/after by evaluation."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from _detect_helpers import PLAIN_MODEL, breast_like, canonical_image, small_detector, tiling_spec

from MicrocalcAI.core.detect.calibration import Calibration, logit, sigmoid
from MicrocalcAI.core.detect.manifest import MERGE_FLOOR, load_manifest, resolve_model
from MicrocalcAI.core.detect.run import detect
from MicrocalcAI.core.errors import ModelError
from MicrocalcAI.evaluation.curves import calibration_bins
from MicrocalcAI.training.calibration_fit import fit_calibration, fit_platt, fit_temperature
from MicrocalcAI.training.export import write_manifest_entry
from MicrocalcAI.training.validation import ImageEvaluation

# ------------------------------------------------------------------ applying a calibration


def test_a_known_temperature_changes_known_logits_exactly():
    # Box-head logits (background, benign, malignant) -> p_malignant as the network computes it.
    logits = torch.tensor([[0.3, 1.0, 3.0], [2.0, 0.5, -1.5], [0.0, 2.0, 2.0], [-1.0, -4.0, 3.0]], dtype=torch.float64)
    p = torch.softmax(logits[:, 1:], -1)[:, 1].numpy()
    diff = (logits[:, 2] - logits[:, 1]).numpy()  # l_mal - l_ben
    for temperature in (0.5, 2.0, 3.7):
        cal = Calibration(temperature=temperature)
        expected = torch.softmax(logits[:, 1:] / temperature, -1)[:, 1].numpy()  # softmax of logits / T
        np.testing.assert_allclose(cal.p_malignant(p), expected, rtol=0, atol=1e-14)
        np.testing.assert_allclose(logit(cal.p_malignant(p)), diff / temperature, rtol=1e-9, atol=1e-9)
        # the label (p >= 0.5) never changes, the order neither
        assert list(cal.p_malignant(p) >= 0.5) == list(p >= 0.5)
        assert list(np.argsort(cal.p_malignant(p))) == list(np.argsort(p))
    # hand values: logit(0.9) = ln 9, halved -> ln 3 -> 0.75; logit(0.1) -> 0.25; 0.5 stays
    np.testing.assert_allclose(Calibration(temperature=2.0).p_malignant([0.9, 0.1, 0.5]), [0.75, 0.25, 0.5], atol=1e-15)


def test_platt_map_and_inverses_are_exact():
    cal = Calibration(temperature=2.0, score_a=0.5, score_b=-np.log(3.0))
    s = np.array([0.05, 0.2, 0.5, 0.9, 0.99])
    np.testing.assert_allclose(cal.score(s), sigmoid(0.5 * np.log(s / (1 - s)) - np.log(3.0)), atol=1e-15)
    np.testing.assert_allclose(cal.score([0.9]), [0.5], atol=1e-15)  # 0.5 * ln 9 - ln 3 = 0
    np.testing.assert_allclose(cal.raw_score(cal.score(s)), s, atol=1e-14)
    np.testing.assert_allclose(cal.raw_p_malignant(cal.p_malignant(s)), s, atol=1e-14)
    # a saturated float32 softmax (exactly 1.0) is still softened, not kept at certainty
    assert Calibration(temperature=3.0).p_malignant([1.0])[0] < 0.997
    # the identity passes values through bit for bit
    x = np.array([0.123456789, 0.987654321])
    assert Calibration().p_malignant(x).tolist() == x.tolist() and Calibration().score(x).tolist() == x.tolist()


@pytest.mark.parametrize(
    "fields", [{"temperature": 0.0}, {"temperature": -1.0}, {"score_a": -0.5}, {"score_b": float("nan")}]
)
def test_an_order_reversing_or_invalid_calibration_is_refused(fields):
    with pytest.raises(ValueError):
        Calibration(**fields)


# ------------------------------------------------------------------ fitting


def test_the_fit_recovers_a_known_temperature_and_platt_map():
    rng = np.random.default_rng(7)
    z = rng.normal(0.0, 3.0, 20000)
    # outcomes drawn from a model whose true temperature is 2.5: p_raw is over-confident
    malignant = rng.random(z.size) < sigmoid(z / 2.5)
    assert fit_temperature(sigmoid(z), malignant) == pytest.approx(2.5, rel=0.05)
    true_mark = rng.random(z.size) < sigmoid(0.7 * z - 1.2)
    a, b = fit_platt(sigmoid(z), true_mark)
    assert a == pytest.approx(0.7, rel=0.05) and b == pytest.approx(-1.2, abs=0.08)


def _synthetic_evaluations(rng: np.random.Generator, n_images: int = 300) -> list[ImageEvaluation]:
    """One GT lesion per image and two detections: one on it, one elsewhere (a false mark)."""
    evals = []
    for k in range(n_images):
        malignant = bool(k % 2)
        z_mal = rng.normal(4.0 if malignant else -4.0, 3.0)
        evals.append(
            ImageEvaluation(
                name=f"i{k}",
                gt_boxes=np.array([[100.0, 100.0, 140.0, 140.0]]),
                gt_labels=np.array([2 if malignant else 1]),
                det_boxes=np.array([[102.0, 101.0, 139.0, 141.0], [400.0, 400.0, 430.0, 430.0]]),
                det_scores=np.array([sigmoid(rng.normal(3.0, 1.0)), sigmoid(rng.normal(1.0, 1.0))]),
                det_p_malignant=np.array([sigmoid(z_mal), 0.5]),
            )
        )
    return evals


def test_fit_calibration_uses_true_marks_and_found_lesions_and_records_before_after():
    evals = _synthetic_evaluations(np.random.default_rng(3))
    cal, record = fit_calibration(evals, fitted_on="synthetic")
    assert record["score"]["n"] == 600 and record["score"]["n_true"] == 300
    assert record["p_malignant"]["n"] == 300 and record["p_malignant"]["n_malignant"] == 150
    # every score above 0.5 while only half the marks are true: calibration pulls them down
    assert cal.score_b < 0 or cal.score_a < 1
    for part in ("score", "p_malignant"):
        assert record[part]["after"]["ece"] < record[part]["before"]["ece"]
    # the recorded "before" is exactly the reliability of the raw values
    raw_p = np.array([ev.det_p_malignant[0] for ev in evals])
    malignant = np.array([ev.gt_labels[0] == 2 for ev in evals])
    assert record["p_malignant"]["before"]["ece"] == pytest.approx(calibration_bins(raw_p, malignant)["ece"])
    assert "synthetic (300 images, 600 detections, 300 found lesions" in cal.fitted_on


def test_a_part_without_both_outcomes_stays_uncalibrated():
    evals = [ev for ev in _synthetic_evaluations(np.random.default_rng(4)) if ev.gt_labels[0] == 2]
    cal, record = fit_calibration(evals)
    assert cal.temperature == 1.0 and "p_malignant" in record["not_fitted"]
    assert cal.score_a != 1.0 and "score" not in record["not_fitted"]


# ------------------------------------------------------------------ the manifest


def test_manifest_round_trip_and_entries_without_calibration_load_unchanged(tmp_path):
    old = resolve_model(PLAIN_MODEL)  # 0.2.1's entry was written without one
    assert old.calibration is None and old.reporting_floor == MERGE_FLOOR
    bundled = resolve_model(None)  # the default (0.5.0) ships one, fitted on its validation set
    assert bundled.calibration is not None and bundled.reporting_floor == pytest.approx(
        float(bundled.calibration.score(MERGE_FLOOR))
    )
    cal = Calibration(temperature=1.7, score_a=0.6, score_b=-0.4, fitted_on="sim_val (40 images)")
    spec = replace(tiling_spec(name="calibrated"), calibration=cal)
    plain = tiling_spec(name="plain")
    write_manifest_entry(tmp_path, plain)
    write_manifest_entry(tmp_path, spec)
    doc = json.loads((tmp_path / "manifest.json").read_text())
    by_name = {m["name"]: m for m in doc["models"]}
    assert "calibration" not in by_name["plain"]
    assert by_name["calibrated"]["calibration"] == {
        "temperature": 1.7,
        "score_a": 0.6,
        "score_b": -0.4,
        "fitted_on": "sim_val (40 images)",
    }
    _, specs = load_manifest(tmp_path)
    loaded = {s.name: s for s in specs}
    assert loaded["calibrated"].calibration == cal and loaded["plain"].calibration is None
    assert loaded["calibrated"].reporting_floor == pytest.approx(float(cal.score(MERGE_FLOOR)))
    # a broken calibration is a clear model error naming the entry
    for bad in ({"temperature": -2}, {"temperature": "hot"}, {"temprature": 2.0}, [1.0]):
        by_name["calibrated"]["calibration"] = bad
        (tmp_path / "manifest.json").write_text(json.dumps(doc))
        with pytest.raises(ModelError, match="calibrated"):
            load_manifest(tmp_path)


# ------------------------------------------------------------------ detect()


def test_detect_reports_calibrated_values_and_a_mapped_threshold_keeps_the_same_lesions():
    image, mask = breast_like((300, 300), seed=11)
    canonical = canonical_image(image, mask)
    model = small_detector("mobilenet_v2", pretrained=True)
    raw_spec = tiling_spec()
    raw = detect(canonical, model, raw_spec, score_threshold=MERGE_FLOOR)
    assert len(raw) >= 3, "an untrained detector still scores ~0.5 on foreground"
    cal = Calibration(temperature=2.0, score_a=0.5, score_b=-1.0)
    spec = replace(raw_spec, calibration=cal)
    raw_scores = np.array([d.score for d in raw])
    # a raw threshold halfway down the list, and the same threshold on the calibrated scale
    t_raw = float(np.sort(raw_scores)[len(raw) // 2])
    t_cal = float(cal.score(t_raw))
    got = detect(canonical, model, spec, score_threshold=t_cal)
    kept = [d for d in raw if d.score >= t_raw]
    assert len(got) == len(kept) >= 1
    for g, r in zip(got, kept):
        np.testing.assert_array_equal(g.box, r.box)
        assert g.label == r.label
        assert g.score == pytest.approx(float(cal.score(r.score)), abs=1e-12)
        assert g.p_malignant == pytest.approx(float(sigmoid(logit(r.p_malignant) / 2.0)), abs=1e-12)
        assert g.score != r.score
    # the threshold is on the calibrated scale: exactly a reported score keeps that lesion
    t_exact = got[-1].score
    assert len(detect(canonical, model, spec, score_threshold=t_exact)) == len(got)
    # the model's own threshold is calibrated too; and nothing below the raw merge floor appears
    everything = detect(canonical, model, replace(spec, score_threshold=0.0))
    assert len(everything) == len(raw)
    assert min(d.score for d in everything) >= spec.reporting_floor - 1e-12


# ------------------------------------------------------------------ re-calibrating an existing entry


def test_recalibrate_an_existing_entry_from_a_validation_coco_through_the_cli(tmp_path, capsys):
    from _train_helpers import simulate_tiny

    from MicrocalcAI.cli import main
    from MicrocalcAI.core.detect.manifest import MANIFEST_NAME, default_models_dir, verify_weights

    bundled_manifest = default_models_dir() / MANIFEST_NAME
    before = bundled_manifest.read_bytes()
    coco = simulate_tiny(tmp_path / "sim", n_images=4, seed=3003)
    out = tmp_path / "models"
    plain = PLAIN_MODEL  # the bundled entry without a calibration (0.2.1)
    argv = ["export", "--recalibrate", str(bundled_manifest), "--name", plain, "--val", str(coco)]
    argv += ["--out", str(out), "--device", "cpu"]
    assert main([*argv, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "temperature" in printed and "ECE" in printed
    assert bundled_manifest.read_bytes() == before  # the source manifest is never touched with --out
    bundled = resolve_model(plain)
    default, specs = load_manifest(out)
    assert default == bundled.name and [s.name for s in specs] == [bundled.name]
    spec = specs[0]
    # the weights are the bundled ones, found from the new folder by absolute path
    assert verify_weights(spec) == bundled.weights_path.resolve()
    assert spec.calibration is not None and str(coco) in spec.calibration.fitted_on
    record = spec.metrics["calibration"]
    assert record["previous"]["score_threshold"] == bundled.score_threshold
    assert record["previous"]["calibration"] is None
    assert record["score"]["n"] >= record["score"]["n_true"] >= 1
    assert record["validation_at_new_threshold"]["score_threshold"] == spec.score_threshold
    assert 0.05 <= spec.score_threshold <= 0.95
    assert [c.name for c in spec.risk_categories] == ["low", "intermediate", "high"]
    # the fitted parameters are the ones recorded, and the old metrics are kept
    assert record["parameters"] == spec.calibration.to_json()
    assert spec.metrics["validation"] == bundled.metrics["validation"]
    # --negatives: the same images without their labels (every mark false), capped at 0.25 per image
    data = json.loads(coco.read_text())
    for image in data["images"]:
        image["file_name"] = str((coco.parent / image["file_name"]).resolve())
    negatives = tmp_path / "negatives.json"
    negatives.write_text(json.dumps(data | {"annotations": []}))
    capped_out = tmp_path / "capped"
    argv = ["export", "--recalibrate", str(bundled_manifest), "--name", plain, "--val", str(coco), "--device", "cpu"]
    argv += ["--out", str(capped_out), "--negatives", str(negatives), "--max-negative-fp", "0.25", "--quiet"]
    assert main(argv) == 0
    assert "negatives (4 images)" in capsys.readouterr().out
    capped = load_manifest(capped_out)[1][0]
    block = capped.metrics["negatives"]  # one place, replaced by every recalibration
    assert block["n_images"] == 4 and block["cap_met"] == (block["fp_per_image"] <= 0.25)
    assert block["validation_threshold"] == spec.score_threshold  # same fit, same validation
    assert capped.score_threshold == block["score_threshold"] >= spec.score_threshold
    # a negatives file without images would switch the cap off silently: refused up front
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(data | {"images": [], "annotations": []}))
    argv = ["export", "--recalibrate", str(bundled_manifest), "--name", plain, "--val", str(coco)]
    assert main([*argv, "--out", str(tmp_path / "refused"), "--negatives", str(empty), "--quiet"]) == 2
    assert not (tmp_path / "refused").exists()
    # without --val it is a usage error (exit 2), nothing written
    assert main(["export", "--recalibrate", str(bundled_manifest), "--out", str(tmp_path / "none"), "--quiet"]) == 2
    assert not (tmp_path / "none").exists()


def test_recalibrating_into_another_folder_keeps_the_ood_reference_loadable(tmp_path):
    """The default entry ships an OOD side file: written to another folder, the entry must still
    find (and verify) it, like its weights, or every analysis with it fails."""
    from _train_helpers import simulate_tiny

    from MicrocalcAI.core.detect.manifest import verify_weights
    from MicrocalcAI.core.ood.reference import load_reference
    from MicrocalcAI.training.calibration_fit import recalibrate_manifest_entry

    shipped = resolve_model(None)
    assert shipped.ood is not None, "the default model is expected to ship an OOD reference"
    coco = simulate_tiny(tmp_path / "sim", n_images=2, seed=3003)
    out = tmp_path / "models"
    spec, _ = recalibrate_manifest_entry(shipped.folder, coco, name=shipped.name, out_dir=out, device="cpu")
    _, specs = load_manifest(out)
    (written,) = specs
    verify_weights(written)
    assert load_reference(written) is not None  # found and checksummed from the new folder
    assert written.ood["sha256"] == shipped.ood["sha256"]


def test_recalibrate_refuses_options_it_would_ignore(tmp_path, capsys):
    from MicrocalcAI.cli import main
    from MicrocalcAI.core.detect.manifest import default_models_dir

    for extra in (["--ood-train", "train.json"], ["--no-calibration"]):
        argv = ["export", "--recalibrate", str(default_models_dir()), "--val", "val.json", *extra]
        assert main(argv) != 0, extra
        assert f"does not take {extra[0]}" in capsys.readouterr().err, extra
