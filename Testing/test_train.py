"""Training loop, resume, metrics and export (MicrocalcAI.training.loop), on real torch and real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import simulate_tiny, tiny_train_config

from MicrocalcAI.core.detect.manifest import load_manifest, sha256_file
from MicrocalcAI.core.detect.weights import load_detector
from MicrocalcAI.core.errors import CancelledError, MicrocalcAIError
from MicrocalcAI.evaluation.curves import roc_auc
from MicrocalcAI.training.checkpoints import load_checkpoint
from MicrocalcAI.training.config import TrainConfig, TrainConfigError
from MicrocalcAI.training.export import export_model
from MicrocalcAI.training.loop import train, training_samples
from MicrocalcAI.training.validation import (
    ImageEvaluation,
    choose_malignancy_operating_points,
    choose_score_threshold,
    lowest_threshold_within,
    summarise,
)


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory) -> Path:
    return simulate_tiny(tmp_path_factory.mktemp("tiny_train_sim"), n_images=2, seed=21)


def _config(coco: Path, out: Path, **overrides) -> TrainConfig:
    return TrainConfig(**tiny_train_config(coco, out, **overrides))


def test_training_checkpoints_resumes_identically_and_exports(tiny_coco, tmp_path):
    # Uninterrupted reference run.
    ref = train(_config(tiny_coco, tmp_path / "ref"))
    assert ref.iterations == 4 and ref.best_checkpoint is not None
    log_lines = [json.loads(line) for line in (tmp_path / "ref" / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log_lines if "loss" in r]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert any("validation" in r for r in log_lines)

    # Same run, cancelled after iteration 2 through the progress callback, then resumed.
    def cancel_at_half(fraction: float, message: str) -> None:
        if fraction >= 0.5:
            raise CancelledError("test stop")

    out = tmp_path / "resumed"
    with pytest.raises(CancelledError):
        train(_config(tiny_coco, out), progress=cancel_at_half)
    assert load_checkpoint(out / "last.pt")["iteration"] == 2
    with pytest.raises(TrainConfigError, match="resume"):
        train(_config(tiny_coco, out))  # never silently overwrites a run
    resumed = train(_config(tiny_coco, out), resume=True)
    assert resumed.iterations == 4

    a, b = load_checkpoint(tmp_path / "ref" / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["iteration"] == b["iteration"] == 4
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert a["sampler_state"] == b["sampler_state"]
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])

    # Export: fp16 safetensors + manifest entry that load_manifest / load_detector accept.
    models = tmp_path / "models"
    spec = export_model(
        ref.best_checkpoint, models, "tiny", "0.1", val_coco=tiny_coco, training_data="tiny sim", device="cpu"
    )
    default, specs = load_manifest(models)
    assert default == "tiny" and [s.name for s in specs] == ["tiny"]
    entry = specs[0]
    assert entry.sha256 == sha256_file(models / entry.file) == spec.sha256
    assert entry.backbone == "mobilenet_v2" and entry.training_data == "tiny sim"
    assert 0.05 <= entry.score_threshold <= 0.95 and "validation" in entry.metrics
    # the calibration is fitted on --val by default and stored with what it was fitted on
    assert entry.calibration == spec.calibration is not None and str(tiny_coco) in entry.calibration.fitted_on
    assert entry.metrics["calibration"]["score"]["n"] >= 1
    loaded = load_detector(entry, "cpu")
    best = load_checkpoint(ref.best_checkpoint)["model"]
    for key, value in loaded.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, best[key].float(), rtol=2e-3, atol=1e-4)
    # Real-film false-mark cap: the same images with their annotations stripped are negatives
    # (every mark false); the threshold becomes max(validation's, the negatives' floor).
    negatives = tmp_path / "negatives.json"
    coco = json.loads(tiny_coco.read_text())
    for image in coco["images"]:
        image["file_name"] = str((tiny_coco.parent / image["file_name"]).resolve())
    negatives.write_text(json.dumps(coco | {"annotations": []}))
    capped = export_model(
        ref.best_checkpoint,
        tmp_path / "capped",
        "tiny",
        "0.1",
        val_coco=tiny_coco,
        negatives_coco=[negatives],
        max_negative_fp_per_image=0.5,
        device="cpu",
    )
    record = capped.metrics["negatives"]
    assert record["n_images"] == len(coco["images"]) and record["datasets"] == [str(negatives)]
    assert record["validation_threshold"] == spec.score_threshold  # same weights, same validation
    assert capped.score_threshold >= spec.score_threshold  # the cap never lowers validation's threshold
    assert record["score_threshold"] == capped.score_threshold and record["n_images_refused"] == 0
    assert record["cap_met"] == (record["fp_per_image"] <= 0.5)
    if record["fp_per_image_at_validation_threshold"] > 0.5 and record["cap_met"]:
        assert capped.score_threshold > spec.score_threshold
    assert "negative images" in capped.metrics["operating_point_rule"]
    # A second export under the same name replaces the entry instead of duplicating it.
    export_model(ref.best_checkpoint, models, "tiny", "0.2", device="cpu")
    _, specs = load_manifest(models)
    assert [(s.name, s.version) for s in specs] == [("tiny", "0.2")]
    assert specs[0].calibration is None  # nothing to fit on without --val


def test_sources_are_pooled_and_training_can_start_from_existing_weights(tiny_coco, tmp_path):
    other = simulate_tiny(tmp_path / "other", n_images=3, seed=22)
    config = _config(tiny_coco, tmp_path / "pooled", train_coco=[str(tiny_coco), str(other)])
    samples = training_samples(config, tmp_path / "cache")
    assert [s.path.parent.parent for s in samples] == [tiny_coco.parent] * 2 + [other.parent] * 3

    # Fine-tuning start: from a checkpoint and from exported fp16 safetensors.
    ref = train(_config(tiny_coco, tmp_path / "ref"))
    start = load_checkpoint(ref.last_checkpoint)["model"]
    models = tmp_path / "models"
    from MicrocalcAI.cli import main

    assert (
        main(
            [
                "export",
                ref.last_checkpoint,
                "--out",
                str(models),
                "--name",
                "start",
                "--version",
                "1",
                "--val",
                str(tiny_coco),
                "--training-data",
                "tiny sim",
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    default, (spec,) = load_manifest(models)
    assert default == "start" and spec.training_data == "tiny sim" and "validation" in spec.metrics
    assert (
        main(["export", str(tmp_path / "none.pt"), "--out", str(models), "--name", "x", "--version", "1", "--quiet"])
        != 0
    )
    for init in (ref.last_checkpoint, str(models / "start-1.safetensors")):
        out = tmp_path / f"tuned_{Path(init).suffix[1:]}"
        train(
            _config(
                tiny_coco,
                out,
                init_weights=init,
                iterations=1,
                lr=1e-9,
                warmup_iterations=0,
                momentum=0.0,
                weight_decay=0.0,
                val_every=1,
            )
        )
        tuned = load_checkpoint(out / "last.pt")["model"]
        convs = [k for k, v in start.items() if k.endswith(".weight") and v.ndim == 4]
        assert len(convs) > 50
        for key in convs:  # lr 1e-9 leaves the conv weights as loaded (fp16 rounding aside)
            torch.testing.assert_close(tuned[key], start[key], rtol=2e-3, atol=2e-3)

    # Weights of another network, or of other anchors (same tensor shapes), are refused by name.
    weights = str(models / "start-1.safetensors")
    with pytest.raises(TrainConfigError, match="backbone mobilenet_v2 \\(config: resnet18\\)"):
        train(_config(tiny_coco, tmp_path / "wrong", backbone="resnet18", init_weights=weights))
    for init in (weights, ref.last_checkpoint):
        with pytest.raises(TrainConfigError, match="anchor_sizes"):
            train(_config(tiny_coco, tmp_path / "anchors", anchor_sizes=(8, 16, 32, 64, 128), init_weights=init))
    # A missing file is reported before any image is standardised (the COCO here does not even exist).
    with pytest.raises(TrainConfigError, match="init_weights: file not found"):
        train(
            _config(
                tiny_coco,
                tmp_path / "missing",
                train_coco=str(tmp_path / "absent.json"),
                init_weights=str(tmp_path / "nope.safetensors"),
            )
        )

    # A failing export (bad validation file) leaves no weights behind and the manifest untouched.
    before = sorted(p.name for p in models.iterdir())
    assert (
        main(
            [
                "export",
                ref.last_checkpoint,
                "--out",
                str(models),
                "--name",
                "start",
                "--version",
                "1",
                "--val",
                str(tmp_path / "absent.json"),
                "--quiet",
            ]
        )
        != 0
    )
    assert sorted(p.name for p in models.iterdir()) == before


def test_config_from_json_resolves_paths_and_rejects_typos(tmp_path):
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    path = cfg_dir / "c.json"
    path.write_text(json.dumps({"train_coco": "../data/a.json", "output_dir": "runs/x", "patch": {"patch_size": 256}}))
    config = TrainConfig.from_json(path)
    assert Path(config.train_coco) == (tmp_path / "data" / "a.json").resolve()
    assert Path(config.output_dir) == (cfg_dir / "runs" / "x").resolve()
    assert config.patch.patch_size == 256
    path.write_text(
        json.dumps(
            {"train_coco": ["../data/a.json", "/abs/b.json"], "output_dir": "o", "init_weights": "w.safetensors"}
        )
    )
    config = TrainConfig.from_json(path)
    assert config.train_coco == [str((tmp_path / "data" / "a.json").resolve()), "/abs/b.json"]
    assert Path(config.init_weights) == (cfg_dir / "w.safetensors").resolve()
    with pytest.raises(TrainConfigError, match="train_coco"):
        TrainConfig(train_coco=[], output_dir="o")
    with pytest.raises(TrainConfigError, match="val_coco must be one path"):
        TrainConfig(train_coco="a", output_dir="o", val_coco=["v1", "v2"])
    path.write_text(json.dumps({"train_coco": "a.json", "output_dir": "o", "learning_rate": 0.1}))
    with pytest.raises(TrainConfigError, match="learning_rate"):
        TrainConfig.from_json(path)
    path.write_text(json.dumps({"train_coco": "a.json", "output_dir": "o", "patch": {"patch_size": 8}}))
    with pytest.raises(MicrocalcAIError, match="patch_size"):
        TrainConfig.from_json(path)
    with pytest.raises(TrainConfigError, match="optimizer"):
        TrainConfig(train_coco="a", output_dir="o", optimizer="rmsprop")


def test_summary_counts_hits_false_positives_and_auc():
    evals = [
        ImageEvaluation(
            "a",
            np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float),
            np.array([2, 1]),
            np.array([[1, 1, 9, 9], [2, 2, 8, 8], [200, 200, 210, 210]], float),
            np.array([0.9, 0.6, 0.4]),
            np.array([0.8, 0.7, 0.5]),
        ),
        ImageEvaluation(
            "b", np.zeros((0, 4)), np.zeros(0, int), np.array([[5, 5, 9, 9]], float), np.array([0.7]), np.array([0.1])
        ),
    ]
    m = summarise(evals, 0.5)
    # Lesion 1 found (twice: one hit, no FP), lesion 2 missed; FPs: only b's 0.7 box (a's 0.4 is below 0.5).
    assert m["lesion_sensitivity"] == 0.5 and m["false_positives"] == 1 and m["fp_per_image"] == 0.5
    assert m["malignant_sensitivity"] == 1.0 and m["benign_sensitivity"] == 0.0
    m = summarise(evals, 0.3)
    assert m["false_positives"] == 2 and m["lesion_sensitivity"] == 0.5
    # No FP allowed: the threshold must pass b's 0.7 box; sensitivity 0.5 holds up to the 0.9 hit.
    assert 0.7 < choose_score_threshold(evals, target_fp_per_image=0.0) <= 0.9
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])) == 1.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    assert np.isnan(roc_auc(np.array([0.3]), np.array([1])))


def test_negatives_raise_the_threshold_to_their_false_mark_cap_and_never_lower_it():
    from MicrocalcAI.training.calibration_fit import choose_operating_points, negatives_record

    boxes = np.array([[10.0 * i, 0, 10.0 * i + 5, 5] for i in range(4)])
    # Validation: 4 lesions at 0.3-0.9, no false marks: validation alone takes a low threshold.
    val = [
        ImageEvaluation(
            "v",
            boxes,
            np.array([1, 1, 2, 2]),
            boxes.copy(),
            np.array([0.3, 0.5, 0.7, 0.9]),
            np.array([0.1, 0.2, 0.8, 0.9]),
        )
    ]
    # Two lesion-free images with marks at 0.2, 0.4, 0.6 and 0.8: 2 marks per image at 0.4.
    marks = np.array([[0, 0, 5, 5], [20, 20, 25, 25]], float)
    negatives = [
        ImageEvaluation("n1", np.zeros((0, 4)), np.zeros(0, int), marks, np.array([0.2, 0.6]), np.array([0.5, 0.5])),
        ImageEvaluation("n2", np.zeros((0, 4)), np.zeros(0, int), marks, np.array([0.4, 0.8]), np.array([0.5, 0.5])),
    ]
    # <= 1 mark per image: 2 marks in all, i.e. above 0.4 (0.6 and 0.8 remain).
    assert lowest_threshold_within(negatives, 1.0) == 0.41
    assert lowest_threshold_within(negatives, 0.5) == 0.61
    assert lowest_threshold_within(negatives, 2.0) == 0.05
    plain = choose_operating_points(val, 0.5)
    capped = choose_operating_points(val, 0.5, negatives, 1.0)
    assert plain.score_threshold == 0.3 and capped.score_threshold == 0.41  # 0.3: all 4 lesions, highest
    assert capped.validation_threshold == plain.score_threshold
    # A cap the negatives already meet leaves validation's threshold alone.
    assert choose_operating_points(val, 0.5, negatives, 3.0).score_threshold == plain.score_threshold
    record = negatives_record(negatives, ["n.json"], capped, 1.0)
    assert record["fp_per_image_at_validation_threshold"] == 1.5 and record["fp_per_image"] == 1.0  # 0.4, 0.6, 0.8
    with pytest.raises(MicrocalcAIError, match="max_negative_fp_per_image"):
        choose_operating_points(val, 0.5, negatives, 0.0)


def test_malignancy_operating_points_sit_inside_the_separating_range():
    boxes = np.array([[10.0 * i, 0, 10.0 * i + 5, 5] for i in range(4)])
    ev = ImageEvaluation(
        "a", boxes, np.array([1, 1, 2, 2]), boxes.copy(), np.full(4, 0.9), np.array([0.1, 0.2, 0.8, 0.9])
    )
    points = choose_malignancy_operating_points([ev], score_threshold=0.5)
    # Any threshold in (0.2, 0.8] separates the classes perfectly.
    assert 0.2 < points["high_sensitivity"] < points["balanced"] <= 0.8
    assert 0.4 <= points["balanced"] <= 0.6
