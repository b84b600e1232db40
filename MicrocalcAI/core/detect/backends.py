"""Optional CPU backends for the detector's backbone + FPN: ONNX Runtime or OpenVINO.

On a CPU, most of a tile's time is the mobilenet_v2 backbone and its feature pyramid, and
PyTorch's eager depthwise convolutions are slow there: the same backbone exported to ONNX
runs about 2-3 times faster in ONNX Runtime or OpenVINO on the 2-core machine this was
measured on (docs/performance.md). Only the backbone is exported: it is a static graph,
whereas the region proposal and box heads of torchvision's Faster R-CNN have data-dependent
shapes (top-k, NMS, RoIAlign over a variable number of boxes) that stay in torch, unchanged.

The exported file is a cache, not a shipped artefact: it is written once per weights file
(its sha256), torch version and opset under ``MICROCALCAI_CACHE_DIR`` (default
``$XDG_CACHE_HOME/microcalcai`` or ``~/.cache/microcalcai``), atomically, and re-made if
missing. Any failure (package missing, export or session error, cache not writable) logs a
warning and leaves the torch backbone in place: an optional accelerator never stops an
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

__all__ = ["BACKENDS", "ExportedBackbone", "choose_backend", "export_backbone", "with_exported_backbone"]

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "openvino")
#: Preference when the user does not choose: measured fastest first (docs/performance.md).
AUTO_ORDER = ("openvino", "onnxruntime")
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


def _level_names(backbone: nn.Module) -> list[str]:
    with torch.inference_mode():
        return list(backbone(torch.zeros(1, 3, 64, 64)).keys())


def export_backbone(backbone: nn.Module, spec: ModelSpec) -> tuple[Path, list[str]]:
    """The backbone as an ONNX file (dynamic batch, height and width), from the cache or
    exported now; and the names of its output levels, in order."""
    names = _level_names(backbone)
    version = torch.__version__.split("+")[0]
    path = _cache_dir() / f"{spec.backbone}-{spec.sha256[:16]}-torch{version}-opset{_OPSET}.onnx"
    if path.is_file():
        return path, names
    buffer = io.BytesIO()
    example = torch.zeros(1, 3, spec.tile_size, spec.tile_size)
    outputs = [f"level_{n}" for n in names]
    axes = {_INPUT: {0: "batch", 2: "height", 3: "width"}}
    axes.update({o: {0: "batch", 2: f"{o}_h", 3: f"{o}_w"} for o in outputs})
    with torch.no_grad():
        torch.onnx.export(
            backbone.eval(),
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
    log.info("exported the %s backbone to %s", spec.backbone, path)
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
            result = self._compiled(array)
            outputs = [result[self._compiled.output(i)] for i in range(len(self.names))]
        return OrderedDict((name, torch.from_numpy(out)) for name, out in zip(self.names, outputs))


def with_exported_backbone(model: nn.Module, spec: ModelSpec, runtime: str) -> bool:
    """Swap ``model.backbone`` (an inference copy) for the ``runtime`` one, in place; False,
    with a warning, when that cannot be done (the torch backbone then stays)."""
    if runtime == "torch":
        return False
    backbone = model.backbone  # type: ignore[attr-defined]
    try:
        path, names = export_backbone(backbone, spec)
        exported = ExportedBackbone(path, names, backbone.out_channels, runtime, torch.get_num_threads())
    except Exception as exc:  # noqa: BLE001 - any failure of an optional accelerator: stay on torch
        log.warning("backend %s unavailable (%s); using torch", runtime, exc)
        return False
    model.backbone = exported  # type: ignore[attr-defined]
    log.debug("backbone + FPN run by %s from %s", runtime, path)
    return True
