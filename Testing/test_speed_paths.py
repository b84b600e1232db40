"""The speed levers (MicrocalcAI.core.runtime, tile batching, the batch prefetch) must not
change what the detector reports: pinned on the bundled sample against the reference eager
path, the model exactly as loaded from its weights."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from MicrocalcAI.core import runtime
from MicrocalcAI.core.detect.manifest import resolve_model
from MicrocalcAI.core.detect.network import build_detector
from MicrocalcAI.core.detect.run import detect
from MicrocalcAI.core.detect.weights import load_detector
from MicrocalcAI.core.pipeline import Analyzer
from MicrocalcAI.core.read import read_mammogram
from MicrocalcAI.core.standardise import standardise

SAMPLE = Path(__file__).resolve().parent.parent / "Resources" / "Samples" / "sim_R_CC.dcm"


def assert_same_findings(reference, candidate, box_px: float = 1.0, score: float = 0.01) -> None:
    """Each reference detection has one in ``candidate`` with the same class, box within
    ``box_px`` and score within ``score``; and nothing extra."""
    assert len(candidate) == len(reference)
    unused = list(range(len(candidate)))
    for ref in reference:
        match = [
            j
            for j in unused
            if candidate[j].label == ref.label
            and np.abs(np.asarray(candidate[j].box) - np.asarray(ref.box)).max() <= box_px
            and abs(candidate[j].score - ref.score) <= score
        ]
        assert match, f"no match for {ref.label} {np.round(ref.box)} score {ref.score:.3f}"
        unused.remove(match[0])


@pytest.fixture(scope="module")
def spec():
    return resolve_model(None)


@pytest.fixture(scope="module")
def sample_canonical(spec):
    return standardise(read_mammogram(SAMPLE), spec.spacing_mm)


def test_optimised_detector_finds_what_the_eager_one_finds(spec, sample_canonical):
    eager = load_detector(spec, "cpu")
    fast = runtime.cached_detector(spec, "cpu", "torch")  # folded, channels-last; backends: below
    # Lowest reporting threshold: every merged lesion counts, not only the confident ones.
    reference = detect(sample_canonical, eager, spec, score_threshold=0.05, batch_size=1)
    assert len(reference) >= 3  # the sample's three clusters at least: the comparison has content
    # Another batch size too: tiles batched differently must not change a tile's result.
    assert_same_findings(reference, detect(sample_canonical, fast, spec, score_threshold=0.05, batch_size=3))


def test_analyzer_findings_equal_the_reference_path(spec):
    reference = Analyzer(device="cpu")
    reference.model = load_detector(spec, "cpu")
    optimised = Analyzer(device="cpu")
    assert getattr(optimised.model, "microcalcai_inference_ready", False)
    a, b = reference.analyse(SAMPLE), optimised.analyse(SAMPLE)
    assert [les.label for les in a.lesions] == [les.label for les in b.lesions]
    for x, y in zip(a.lesions, b.lesions):
        assert np.abs(np.asarray(x.box_px) - np.asarray(y.box_px)).max() <= 1.0
        assert abs(x.score - y.score) <= 0.01 and abs(x.p_malignant - y.p_malignant) <= 0.01
    assert a.risk.probability == pytest.approx(b.risk.probability, abs=0.01)


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet18"])
def test_batch_norm_folding_keeps_the_features(backbone):
    torch.manual_seed(0)
    model = build_detector(backbone)[0].eval()
    # Non-trivial statistics, so that folding them in matters.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    ready = runtime.prepare_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ready.backbone.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the input is untouched
    x = torch.rand(2, 3, 128, 128)
    with torch.inference_mode():
        before, after = model.backbone(x), ready.backbone(x)
    for key in before:
        scale = float(before[key].abs().max())
        assert torch.allclose(before[key], after[key], atol=1e-4 * max(scale, 1.0)), key


def test_detector_is_loaded_once_per_weights_file(spec, tmp_path):
    first = runtime.cached_detector(spec, "cpu")
    assert runtime.cached_detector(spec, "cpu") is first
    assert Analyzer(device="cpu").model is first
    # A replaced weights file (new mtime) is loaded and verified again, not served from the cache.
    copy_dir = tmp_path / "models"
    shutil.copytree(spec.weights_path.parent, copy_dir)
    moved = resolve_model(str(copy_dir / "manifest.json"))
    other = runtime.cached_detector(moved, "cpu")
    assert other is not first
    (copy_dir / moved.file).write_bytes(b"not the weights")
    from MicrocalcAI.core.errors import ModelError

    with pytest.raises(ModelError):
        runtime.cached_detector(moved, "cpu")


def test_cpu_threads_follow_the_affinity_mask_or_the_override(monkeypatch):
    saved = torch.get_num_threads()
    try:
        monkeypatch.delenv("MICROCALCAI_THREADS", raising=False)
        assert runtime.configure_cpu() == runtime.available_cpus() == torch.get_num_threads()
        monkeypatch.setenv("MICROCALCAI_THREADS", "1")
        assert runtime.configure_cpu() == 1 == torch.get_num_threads()
        assert runtime.configure_cpu(threads=2) == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(saved)
        runtime.configure_cpu(threads=saved)


def test_batch_prepares_the_next_image_on_another_thread(tmp_path, monkeypatch):
    from MicrocalcAI.core import pipeline
    from MicrocalcAI.core.batch import run_batch

    for i in range(2):
        shutil.copy(SAMPLE, tmp_path / f"img{i}.dcm")
    (tmp_path / "broken.dcm").write_bytes(b"DICM but not really")
    threads: list[str] = []
    real_read = pipeline.read_mammogram

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real_read(*args, **kwargs)

    monkeypatch.setattr(pipeline, "read_mammogram", spy)
    result = run_batch([tmp_path], tmp_path / "out", device="cpu")
    assert len(result.analysed) == 2 and len(result.failed) == 1  # a bad file is reported, the batch goes on
    assert "broken.dcm" in result.failed[0][0]
    assert threads and all(name.startswith("microcalcai-prefetch") for name in threads)
    assert {len(f.lesions) for f in result.images} == {len(result.images[0].lesions)}  # same image, same findings


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_backends_find_what_the_eager_detector_finds(backend, spec, sample_canonical, tmp_path, monkeypatch):
    pytest.importorskip(backend)
    monkeypatch.setenv("MICROCALCAI_CACHE_DIR", str(tmp_path / "cache"))
    runtime.clear_detector_cache()
    try:
        model = runtime.cached_detector(spec, "cpu", backend)
        assert type(model.backbone).__name__ == "ExportedBackbone"  # really running on the backend
        assert list((tmp_path / "cache").glob("*.onnx"))  # exported once, into the cache
        reference = detect(sample_canonical, load_detector(spec, "cpu"), spec, score_threshold=0.05)
        assert_same_findings(reference, detect(sample_canonical, model, spec, score_threshold=0.05))
    finally:
        runtime.clear_detector_cache()


def test_gpu_script_exits_cleanly_without_cuda():
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the script would measure it")
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_speed.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "CUDA is not available" in done.stdout
