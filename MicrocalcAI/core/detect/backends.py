"""Optional CPU backends for the static front of the detector: ONNX Runtime or OpenVINO.

On a CPU, most of a tile's time is the mobilenet_v2 backbone, its feature pyramid and the RPN
head's convolutions over every pyramid level, and PyTorch's eager convolutions (depthwise
ones above all) are slow there: exported to ONNX, the same graph ran 2-3 times faster in ONNX
Runtime or OpenVINO on the 2-core machine this was measured on (docs/performance.md). Only
that static part is exported; the proposal selection and box head of torchvision's Faster
R-CNN have data-dependent shapes (top-k, NMS, RoIAlign over a variable number of boxes) and
stay in torch, unchanged.

The exported file is a cache, not a shipped artefact: it is written once per weights file
(its sha256), torch version and opset under ``MICROCALCAI_CACHE_DIR`` (default
``$XDG_CACHE_HOME/microcalcai`` or ``~/.cache/microcalcai``), atomically, and re-made if
missing. Any failure (package missing, export or session error, cache not writable) logs a
warning and leaves the torch modules in place: an optional accelerator never stops an
analysis. ``MICROCALCAI_BACKEND=torch`` turns it off.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from MicrocalcAI.core.atomic import atomic_write_bytes
from MicrocalcAI.core.detect.manifest import ModelSpec

__all__ = [
    "BACKENDS",
    "ExportedBackbone",
    "PrecomputedRpnHead",
    "choose_backend",
    "export_backbone",
    "with_exported_backbone",
]

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "openvino")
#: Preference when the user does not choose: ONNX Runtime is in the package's `onnx` extra;
#: OpenVINO measured about as fast (docs/performance.md) and is used when only it is installed.
AUTO_ORDER = ("onnxruntime", "openvino")
_OPSET = 17
_INPUT = "image"


def choose_backend(name: Optional[str], device: torch.device) -> str:
    """The backend to use: ``name``, else ``MICROCALCAI_BACKEND``, else ``auto`` (the first
    installed of :data:`AUTO_ORDER` on a CPU, torch on any other device)."""
    wanted = (name or os.environ.get("MICROCALCAI_BACKEND") or "auto").strip().lower()
    if wanted not in BACKENDS + ("auto",):
        from MicrocalcAI.core.errors import ModelError

        raise ModelError(f"unknown backend {wanted!r}; choose one of {list(BACKENDS) + ['auto']}")
    if device.type != "cpu":
        return "torch"
    if wanted != "auto":
        return wanted
    return next((b for b in AUTO_ORDER if importlib.util.find_spec(b) is not None), "torch")


def _cache_dir() -> Path:
    env = os.environ.get("MICROCALCAI_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "microcalcai"


class _BackboneAndRpnHead(nn.Module):
    """What gets exported: the feature levels, then the RPN head's objectness and box deltas
    per level, as one flat tuple (ONNX has no dicts)."""

    def __init__(self, backbone: nn.Module, rpn_head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.rpn_head = backbone, rpn_head

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        features = list(self.backbone(x).values())
        objectness, deltas = self.rpn_head(features)
        return (*features, *objectness, *deltas)


def _level_names(backbone: nn.Module) -> list[str]:
    with torch.inference_mode():
        return list(backbone(torch.zeros(1, 3, 64, 64)).keys())


def export_backbone(model: nn.Module, spec: ModelSpec) -> tuple[Path, list[str]]:
    """The detector's backbone + FPN and RPN head as an ONNX file (dynamic batch, height and
    width), from the cache or exported now; and the names of the feature levels, in order."""
    backbone, head = model.backbone, model.rpn.head  # type: ignore[attr-defined]
    names = _level_names(backbone)
    version = torch.__version__.split("+")[0]
    path = _cache_dir() / f"{spec.backbone}-{spec.sha256[:16]}-rpn-torch{version}-opset{_OPSET}.onnx"
    if path.is_file():
        return path, names
    buffer = io.BytesIO()
    example = torch.zeros(1, 3, spec.tile_size, spec.tile_size)
    outputs = [f"{kind}_{n}" for kind in ("level", "objectness", "deltas") for n in names]
    axes = {_INPUT: {0: "batch", 2: "height", 3: "width"}}
    axes.update({o: {0: "batch", 2: f"{o}_h", 3: f"{o}_w"} for o in outputs})
    with torch.no_grad():
        torch.onnx.export(
            _BackboneAndRpnHead(backbone, head).eval(),
            (example,),
            buffer,
            input_names=[_INPUT],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=_OPSET,
            dynamo=False,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    log.info("exported the %s backbone and RPN head to %s", spec.backbone, path)
    return path, names


class ExportedBackbone(nn.Module):
    """Drop-in for a detector's ``backbone``: the same ordered feature levels, computed by an
    ONNX Runtime session or an OpenVINO compiled model from the exported file."""

    def __init__(self, path: Path, names: list[str], out_channels: int, runtime: str, threads: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.names = list(names)
        self.runtime = runtime
        if runtime == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            # No arena: it keeps the largest batch's activations reserved for the life of the
            # process, resident memory that the 1.5 GB peak budget cannot spare.
            options.enable_cpu_mem_arena = False
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        elif runtime == "openvino":
            import openvino as ov

            config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
            self._compiled = ov.Core().compile_model(str(path), "CPU", config)
        else:
            raise ValueError(f"unknown runtime {runtime!r}")

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.runtime == "onnxruntime":
            outputs = self._session.run(None, {_INPUT: array})
        else:
            # A request per call: the model may be shared by threads (one cached per process).
            result = self._compiled.create_infer_request().infer({0: array})
            outputs = [result[self._compiled.output(i)] for i in range(3 * len(self.names))]
        tensors = [torch.from_numpy(out) for out in outputs]
        k = len(self.names)
        features = OrderedDict(zip(self.names, tensors[:k]))
        # Kept for PrecomputedRpnHead, which hands them to the RPN for exactly these features.
        self.rpn_outputs = (list(features.values()), tensors[k : 2 * k], tensors[2 * k :])
        return features


class PrecomputedRpnHead(nn.Module):
    """The RPN head for an :class:`ExportedBackbone`: returns the objectness and box deltas the
    exported graph computed with the features, when called with those very features (the
    same tensor objects); otherwise runs the original head, so it is never wrong."""

    def __init__(self, source: ExportedBackbone, original: nn.Module) -> None:
        super().__init__()
        self.source = source
        self.original = original

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        cached = getattr(self.source, "rpn_outputs", None)
        if cached is not None and len(cached[0]) == len(features) and all(a is b for a, b in zip(cached[0], features)):
            self.source.rpn_outputs = None
            return cached[1], cached[2]
        return self.original(features)


def with_exported_backbone(model: nn.Module, spec: ModelSpec, runtime: str) -> bool:
    """Swap ``model.backbone`` (an inference copy) for the ``runtime`` one, in place; False,
    with a warning, when that cannot be done (the torch backbone then stays)."""
    if runtime == "torch":
        return False
    backbone = model.backbone  # type: ignore[attr-defined]
    try:
        path, names = export_backbone(model, spec)
        exported = ExportedBackbone(path, names, backbone.out_channels, runtime, torch.get_num_threads())
    except Exception as exc:  # noqa: BLE001 - any failure of an optional accelerator: stay on torch
        log.warning("backend %s unavailable (%s); using torch", runtime, exc)
        return False
    model.backbone = exported  # type: ignore[attr-defined]
    model.rpn.head = PrecomputedRpnHead(exported, model.rpn.head)  # type: ignore[attr-defined]
    log.debug("backbone, FPN and RPN head run by %s from %s", runtime, path)
    return True
