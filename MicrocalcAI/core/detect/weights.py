"""Where detector weights are saved and loaded: fp16 safetensors, checksum first, strict keys.

Weights files are data, never code: they are read with ``safetensors`` only, so a malicious
or mistaken pickle (``torch.save`` output) is refused instead of being executed. fp16 halves
the size of the file shipped in the repository; inference runs in float32 after loading, so
the only cost is fp16 rounding of the weights (relative error about 5e-4).

Loading always verifies the sha256 recorded in the model manifest before parsing a single
byte, so a truncated, swapped or tampered file is an error, never a silently different model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from MicrocalcAI.core.atomic import atomic_write_bytes
from MicrocalcAI.core.detect.manifest import ModelSpec, verify_weights
from MicrocalcAI.core.detect.network import DetectorConfig, build_detector
from MicrocalcAI.core.errors import ModelError

__all__ = [
    "CONFIG_KEY",
    "FORMAT_KEY",
    "FORMAT_VALUE",
    "load_detector",
    "load_state_strict",
    "read_weights_file",
    "save_weights",
]

log = logging.getLogger(__name__)

#: safetensors metadata key holding how the network was built (JSON), for provenance checks.
CONFIG_KEY = "microcalcai_config"
FORMAT_KEY = "format"
FORMAT_VALUE = "microcalcai-detector-fp16"


def _fp16_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Floating tensors in fp16, integer buffers (batch-norm counters) as they are."""
    state = {}
    for key, value in model.state_dict().items():
        tensor = value.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        state[key] = tensor.contiguous().clone()
    return state


def save_weights(model: nn.Module, path: Union[str, os.PathLike], config: DetectorConfig) -> str:
    """Write ``model``'s weights as fp16 safetensors, atomically; return the file's sha256.

    ``config`` (how the network was built, from :func:`build_detector`) is saved with them.

    The sha256 is what goes into the manifest entry. Writing through a temporary file in the
    same folder means a crash or a full disk never leaves a half-written file under the
    final name that a later checksum would then "confirm" for a new manifest.
    """
    from safetensors.torch import save

    metadata = {FORMAT_KEY: FORMAT_VALUE, CONFIG_KEY: json.dumps(config.to_json(), sort_keys=True)}
    data = _sorted_metadata(save(_fp16_state(model), metadata=metadata))
    target = Path(path)
    atomic_write_bytes(target, data)
    digest = hashlib.sha256(data).hexdigest()
    log.info("saved weights %s (%.1f MB, sha256 %s)", target, len(data) / 1e6, digest)
    return digest


def _sorted_metadata(data: bytes) -> bytes:
    """The same safetensors bytes with the header's metadata keys in sorted order.

    safetensors writes the metadata in hash-map order, which changes from run to run, so two
    exports of the same weights would differ in their sha256; the recipe must reproduce the
    shipped file exactly. Only the order of keys changes, never the length or the tensors.
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    if "__metadata__" not in header:
        return data
    metadata = header.pop("__metadata__")
    header = {"__metadata__": dict(sorted(metadata.items())), **header}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if len(text) > size:  # cannot happen for a reordering; keep the library's bytes then
        return data
    return data[:8] + text + b" " * (size - len(text)) + data[8 + size :]


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError/ValueError
        raise ModelError(
            f"weights {path} are not a valid safetensors file ({exc}); MicrocalcAI never unpickles "
            "weights (torch.save/.pt/.pth files are refused): convert them with MicrocalcAI.core.detect.weights.save_weights"
        ) from exc
    return tensors, metadata


def _check_config(spec: ModelSpec, metadata: dict[str, str], path: Path) -> None:
    """A clear message when the manifest describes a different network than the file holds."""
    raw = metadata.get(CONFIG_KEY)
    if raw is None:
        return
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise ModelError(f"weights {path}: unreadable {CONFIG_KEY} metadata: {exc}") from exc
    saved = config.get("backbone")
    if saved is not None and saved != spec.backbone:
        raise ModelError(
            f"weights {path} hold a {saved} detector but model {spec.name!r} says backbone {spec.backbone!r}"
        )
    trained = config.get("noise_equalisation") or None
    wanted = spec.noise_equalisation.to_json() if spec.noise_equalisation is not None else None
    if trained != wanted:
        raise ModelError(
            f"weights {path} were trained {'with noise equalisation ' + json.dumps(trained) if trained else 'without noise equalisation'} "
            f"but model {spec.name!r} says {'noise_equalisation ' + json.dumps(wanted) if wanted else 'none'}: "
            "the network would see input it was not trained on; fix the manifest entry"
        )
    anchors = config.get("anchor_sizes")
    if anchors is not None and [int(a) for a in anchors] != [int(a) for a in spec.anchor_sizes]:
        log.warning(
            "weights %s were saved with anchor sizes %s but the manifest says %s; using the manifest's",
            path,
            anchors,
            list(spec.anchor_sizes),
        )


def load_state_strict(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """``load_state_dict(strict=True)`` whose error names the first missing/unexpected keys
    or the mismatched shape instead of torch's page-long message."""
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        expected = set(model.state_dict())
        missing = sorted(expected - set(tensors))
        unexpected = sorted(set(tensors) - expected)
        detail = f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        if not missing and not unexpected:
            detail = str(exc).splitlines()[-1].strip() if str(exc) else "shape mismatch"
        raise ModelError(f"weights {path} do not fit {what}: {detail}") from exc


def read_weights_file(path: Union[str, os.PathLike]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors of a MicrocalcAI safetensors weights file and the network settings saved with
    them (backbone, anchor sizes; empty when the file has none), without a manifest entry.

    Used to start training from existing weights (fine-tuning); nothing is unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    tensors, metadata = _read_safetensors(path)
    try:
        config = json.loads(metadata.get(CONFIG_KEY, "{}"))
    except ValueError as exc:
        raise ModelError(f"weights {path}: unreadable {CONFIG_KEY} metadata: {exc}") from exc
    return tensors, config if isinstance(config, dict) else {}


def load_detector(spec: ModelSpec, device: Union[torch.device, str] = "cpu") -> nn.Module:
    """Build the detector a manifest entry describes and load its verified weights.

    Checksum first (:class:`~MicrocalcAI.core.errors.ChecksumError` on mismatch), then safetensors
    parsing (never pickle), then strict key and shape checking, so that any disagreement
    between the manifest and the file stops here with a :class:`ModelError`. The model comes
    back in float32, eval mode, on ``device``.
    """
    path = verify_weights(spec)
    tensors, metadata = _read_safetensors(path)
    _check_config(spec, metadata, path)
    model, _ = build_detector(spec.backbone, anchor_sizes=spec.anchor_sizes, tile_size=spec.tile_size)
    load_state_strict(model, tensors, path, f"a {spec.backbone} detector with anchors {list(spec.anchor_sizes)}")
    model.float()
    model.eval()
    model.to(torch.device(device))
    log.debug("loaded model %s %s (%s) from %s", spec.name, spec.version, spec.backbone, path)
    return model
