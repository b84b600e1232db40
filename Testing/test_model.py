"""The detector (MicrocalcAI.core.detect.network) and its weights files (MicrocalcAI.core.detect.weights), on real torch."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from _detect_helpers import small_detector, small_detector_config, small_spec
from safetensors.torch import save_file

from MicrocalcAI.core.detect import network as model_module
from MicrocalcAI.core.detect.manifest import sha256_file
from MicrocalcAI.core.detect.network import (
    BACKBONES,
    DetectorConfig,
    LesionRoIHeads,
    build_backbone,
    build_detector,
    image_to_tensor,
    mobilenet_weights_path,
    select_device,
    set_input_size,
)
from MicrocalcAI.core.detect.weights import load_detector, read_weights_file, save_weights
from MicrocalcAI.core.errors import ChecksumError, ModelError

LOSS_KEYS = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fpn_finest_level_has_stride_4(backbone):
    body = build_backbone(backbone).eval()
    with torch.inference_mode():
        features = body(torch.rand(1, 3, 256, 256))
    assert list(features) == ["0", "1", "2", "3", "pool"]
    sides = [f.shape[-1] for f in features.values()]
    assert sides == [64, 32, 16, 8, 4]  # strides 4, 8, 16, 32, 64 on a 256 px input
    assert len({f.shape[1] for f in features.values()}) == 1  # one FPN width on every level


@pytest.mark.parametrize("backbone", BACKBONES)
def test_train_mode_returns_the_four_losses_and_trains(backbone):
    torch.manual_seed(1)
    model, _ = build_detector(backbone, tile_size=128)
    model.train()
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [
        {"boxes": torch.tensor([[20.0, 30.0, 52.0, 60.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[70.0, 10.0, 90.0, 34.0], [5.0, 80.0, 40.0, 120.0]]), "labels": torch.tensor([1, 2])},
    ]
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS
    assert all(torch.isfinite(v) and v >= 0 for v in losses.values())
    if backbone != "mobilenet_v2":
        return  # backward through the ResNets is the same autograd path, and slow on 2 cores
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    assert model.rpn.head.cls_logits.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("backbone", BACKBONES)
def test_eval_returns_one_box_per_lesion_with_p_malignant(backbone):
    model = small_detector(backbone)
    torch.manual_seed(2)
    with torch.inference_mode():
        outputs = model([torch.rand(3, 192, 192), torch.rand(3, 160, 192)])
    assert len(outputs) == 2
    for out, (h, w) in zip(outputs, [(192, 192), (160, 192)]):
        n = out["boxes"].shape[0]
        assert n > 0  # random init puts ~0.5 on foreground: far above the 0.01 internal threshold
        assert out["boxes"].shape == (n, 4) and out["scores"].shape == (n,) and out["p_malignant"].shape == (n,)
        boxes = out["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        p = out["p_malignant"]
        assert ((p >= 0) & (p <= 1)).all()
        assert ((out["scores"] > 0.01) & (out["scores"] <= 1)).all()
        assert torch.equal(out["labels"] == 2, p >= 0.5)
        # Class-agnostic NMS: no two kept boxes overlap more than the head's NMS threshold.
        from torchvision.ops import box_iou

        iou = box_iou(boxes, boxes).fill_diagonal_(0)
        assert iou.max() <= model.roi_heads.nms_thresh + 1e-6


def test_lesion_head_scores_and_box_choice():
    """One box per proposal: score 1-P(bg), p_mal from the foreground softmax, box of the
    more probable foreground class, and a benign and a malignant box on one spot merge."""
    heads = build_detector("mobilenet_v2", tile_size=128)[0].roi_heads
    assert isinstance(heads, LesionRoIHeads)
    proposals = [torch.tensor([[10.0, 10.0, 30.0, 30.0], [11.0, 10.0, 31.0, 30.0], [60.0, 60.0, 90.0, 80.0]])]
    # 0: malignant-leaning lesion (score 0.91); 1: benign-leaning box on the same spot (0.68);
    # 2: a separate benign-leaning lesion (0.50).
    logits = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.5, 0.2], [1.0, 0.5, 0.1]])
    regression = torch.zeros(3, 3 * 4)
    # Proposal 0: only its malignant-class regression moves the box: dx code 1.0 / weight 10
    # times width 20 = +2 px. Its benign-class regression would move it 5 px the other way.
    regression[0, 2 * 4 + 0] = 1.0
    regression[0, 1 * 4 + 0] = -2.5
    boxes, scores, labels, pmal = heads.postprocess_detections(logits, regression, proposals, [(128, 128)])
    probs = logits.softmax(-1)
    expected_scores = 1 - probs[:, 0]
    expected_p = probs[:, 2] / (probs[:, 1] + probs[:, 2])
    assert torch.allclose(scores[0], expected_scores[[0, 2]], atol=1e-6)  # proposal 1 suppressed
    assert torch.allclose(pmal[0], expected_p[[0, 2]], atol=1e-6)
    assert labels[0].tolist() == [2, 1]
    assert torch.allclose(boxes[0][0], torch.tensor([12.0, 10.0, 32.0, 30.0]), atol=1e-4)
    assert torch.allclose(boxes[0][1], proposals[0][2], atol=1e-4)


def test_model_never_resizes_its_input():
    model, config = build_detector("mobilenet_v2", tile_size=512)
    model.eval()
    assert config == DetectorConfig("mobilenet_v2", (16, 32, 64, 128, 256), 512, 512)
    images, _ = model.transform([torch.rand(3, 256, 192)])
    assert images.image_sizes == [(256, 192)]  # stock transform would upscale to 512 short side
    set_input_size(model, 320)
    assert model.transform.min_size == (320,) and model.transform.max_size == 320
    images, _ = model.transform([torch.rand(3, 320, 320)])
    assert images.image_sizes == [(320, 320)]


def test_mobilenet_imagenet_init_loads_the_packaged_file():
    state = torch.load(mobilenet_weights_path(), map_location="cpu", weights_only=True)
    pretrained, _ = build_detector("mobilenet_v2", pretrained_backbone=True)
    random, _ = build_detector("mobilenet_v2", pretrained_backbone=False)
    body = pretrained.backbone.body
    assert torch.equal(body["0"][0].weight, state["features.0.0.weight"])
    assert torch.equal(body["17"].conv[2].weight, state["features.17.conv.2.weight"])
    assert not torch.equal(random.backbone.body["0"][0].weight, state["features.0.0.weight"])


def test_pretrained_init_errors_are_clear(monkeypatch):
    with pytest.raises(ModelError, match="no ImageNet checkpoint"):
        build_detector("resnet50", pretrained_backbone=True)
    monkeypatch.setattr(model_module, "_MOBILENET_WEIGHTS_PACKAGE", "no_such_weights_package_xyz")
    with pytest.raises(ModelError, match="not installed"):
        build_detector("mobilenet_v2", pretrained_backbone=True)


def test_invalid_build_arguments():
    with pytest.raises(ModelError, match="unknown backbone"):
        build_detector("vgg16")
    with pytest.raises(ModelError, match="one size per pyramid level"):
        build_detector("mobilenet_v2", anchor_sizes=(16, 32, 64))


def test_anchor_sizes_reach_the_anchor_generator():
    model, _ = build_detector("mobilenet_v2", anchor_sizes=(8, 24, 48, 96, 192), tile_size=128)
    assert model.rpn.anchor_generator.sizes == ((8,), (24,), (48,), (96,), (192,))
    assert model.rpn.anchor_generator.aspect_ratios[0] == (0.5, 1.0, 2.0)


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    expected_auto = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert select_device("auto").type == expected_auto
    assert select_device(None).type == expected_auto
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            select_device("cuda")
        with pytest.raises(ModelError, match="CUDA is not available"):
            select_device("cuda:1")
        if not torch.backends.mps.is_available():
            with pytest.raises(ModelError, match="neither CUDA nor Apple MPS"):
                select_device("gpu")
    with pytest.raises(ModelError, match="unknown device|unsupported device"):
        select_device("banana")


def test_image_to_tensor_replicates_grey():
    image = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    tensor = image_to_tensor(image)
    assert tensor.shape == (3, 3, 4) and tensor.dtype == torch.float32
    for channel in tensor:
        assert np.array_equal(channel.numpy(), image)
    with pytest.raises(ModelError):
        image_to_tensor(np.zeros((2, 3, 4)))


# ---------------------------------------------------------------- weights files


def test_save_load_round_trip_gives_the_same_outputs(tmp_path):
    model = small_detector("mobilenet_v2", pretrained=True)
    spec = small_spec(tmp_path, model)
    path = spec.weights_path
    assert spec.sha256 == sha256_file(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    assert 15e6 < path.stat().st_size < 30e6  # fp16: ~10 M parameters * 2 bytes

    loaded = load_detector(spec, "cpu")
    assert not loaded.training
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    torch.manual_seed(3)
    x = torch.rand(3, 256, 256)
    with torch.inference_mode():
        ref, out = model([x])[0], loaded([x])[0]
    n = min(10, ref["scores"].numel())
    assert n > 0
    assert torch.allclose(ref["scores"][:n], out["scores"][:n], atol=5e-3)
    assert torch.allclose(ref["p_malignant"][:n], out["p_malignant"][:n], atol=5e-3)
    assert torch.allclose(ref["boxes"][:n], out["boxes"][:n], atol=0.5)


def test_saving_the_same_weights_twice_gives_the_same_file(tmp_path):
    # The recipe must reproduce the shipped file's sha256. safetensors writes its metadata in
    # hash-map order, which changes between calls: with two keys, five saves would differ with
    # probability 15/16 if the order were not fixed.
    model = small_detector("mobilenet_v2")
    config = small_detector_config()
    digests = {save_weights(model, tmp_path / f"w{i}.safetensors", config) for i in range(5)}
    assert len(digests) == 1
    data = (tmp_path / "w0.safetensors").read_bytes()
    header = data[8 : 8 + int.from_bytes(data[:8], "little")].decode()
    assert header.index('"format"') < header.index('"microcalcai_config"')  # sorted
    assert sha256_file(tmp_path / "w0.safetensors") == digests.pop()


def test_tampered_weights_raise_checksum_error(tmp_path):
    spec = small_spec(tmp_path, small_detector("mobilenet_v2"))
    data = bytearray(spec.weights_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    spec.weights_path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError):
        load_detector(spec)


def test_pickled_weights_are_refused(tmp_path):
    model = small_detector("mobilenet_v2")
    path = tmp_path / "detector.pt"
    torch.save(model.state_dict(), path)
    spec = small_spec(tmp_path, model)
    spec.file, spec.sha256 = path.name, sha256_file(path)  # checksum matches: the format must stop it
    with pytest.raises(ModelError, match="not a valid safetensors"):
        load_detector(spec)


def test_weights_with_wrong_keys_or_backbone_are_refused(tmp_path):
    model = small_detector("mobilenet_v2")
    spec = small_spec(tmp_path, model)
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("roi_heads.box_predictor")}
    partial = tmp_path / "partial.safetensors"
    save_file(state, str(partial))
    spec.file, spec.sha256 = partial.name, sha256_file(partial)
    with pytest.raises(ModelError, match="missing"):
        load_detector(spec)

    spec = small_spec(tmp_path, model, backbone="resnet18")
    with pytest.raises(ModelError, match="mobilenet_v2 detector"):
        load_detector(spec)


def test_save_weights_is_atomic_over_an_existing_file(tmp_path):
    model = small_detector("mobilenet_v2")
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"old contents")
    digest = save_weights(model, path, small_detector_config())
    assert sha256_file(path) == digest
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]


def test_saved_weights_record_the_build_configuration_passed_in(tmp_path):
    # The configuration travels explicitly next to the network, never on it: what is saved is
    # exactly what the caller passes (here with the training patch size as input size).
    model = small_detector("mobilenet_v2")
    config = replace(small_detector_config(), input_size=192)
    save_weights(model, tmp_path / "w.safetensors", config)
    _, saved = read_weights_file(tmp_path / "w.safetensors")
    assert saved == config.to_json() and DetectorConfig.from_json(saved) == config
    assert not hasattr(model, "microcalcai_config")
