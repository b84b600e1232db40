"""How the detector runs on this machine: CPU threads, memory reuse, an inference-ready model
cached once per process.

Profiling ``microcalcai detect`` on a 2-core CPU (docs/performance.md) showed three costs
that have nothing to do with the network itself:

- thread oversubscription: torch's intra-op pool, a separate inter-op pool and any numpy /
  OpenMP pool all sized to the machine compete for the same cores; the losing threads spin
  and yield, which shows up as system time;
- allocation churn: every tile allocates and frees feature maps of tens of MB; glibc hands
  blocks that large straight back to the kernel (``munmap``) and the next tile faults them in
  again, page by page, zero-filled by the kernel (more system time);
- eval-time batch norm: a separate pass over every feature map that can be folded into the
  convolution before it once the weights are fixed.

:func:`configure_cpu` fixes the first two for the process, :func:`prepare_for_inference`
the third (and stores the backbone channels-last, the layout oneDNN's convolutions use), and
:func:`cached_detector` makes the loaded, verified, prepared model a per-process singleton,
so a script that builds an :class:`~MicrocalcAI.core.pipeline.Analyzer` per image, or the
Slicer module re-creating its logic, does not pay the load again.

None of this changes what the model computes beyond float rounding: the findings stay the
same (boxes within 1 px, scores within 0.01; Testing/test_speed_paths.py and
benchmarks/bench_speed.py check it).
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import logging
import os
import threading
from pathlib import Path
from typing import Optional, Union, cast

import torch
from torch import nn

from MicrocalcAI.core.detect.manifest import ModelSpec

__all__ = [
    "available_cpus",
    "cached_detector",
    "clear_detector_cache",
    "configure_cpu",
    "fuse_batch_norm",
    "prepare_for_inference",
]

log = logging.getLogger(__name__)

#: Blocks up to this size come from the heap and stay there after ``free`` instead of going
#: back to the kernel (glibc's own threshold adapts only up to 32 MB): covers the stride-4
#: feature maps of a 4-tile batch (4 x 128 x 128 x 128 float32 = 32 MB) and the wider
#: mobilenet stages. Larger would keep more memory resident for little gain.
_MMAP_THRESHOLD_BYTES = 64 << 20
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

_configured: Optional[int] = None
_cache: dict[tuple[str, str, int, int, str, str], nn.Module] = {}
_cache_lock = threading.Lock()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a SLURM or container limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def _keep_freed_memory(arenas: int) -> bool:
    """Ask glibc to keep large freed blocks for reuse (no munmap/page-fault cycle per tile),
    in at most ``arenas`` malloc arenas.

    glibc gives threads their own arenas (up to 8 per core); with the raised thresholds each
    arena keeps the large blocks its threads freed, so every ONNX Runtime / OpenMP worker and
    the batch's prefetch thread ended up holding its own copy of the feature maps and image
    buffers: measured on ``microcalcai detect`` over the 8 CBIS films, 1738 MiB peak with
    glibc's default arena count against 1458 MiB with two (docs/performance.md).
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_ARENA_MAX, max(1, int(arenas))) == 1
    ok &= mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_BYTES) == 1
    return bool(ok)


def configure_cpu(threads: Optional[int] = None) -> int:
    """Size torch's CPU thread pools to the cores this process may use; returns the count.

    ``threads`` (or the environment's ``MICROCALCAI_THREADS``) overrides the count, e.g. to
    share a machine between workers. One intra-op pool does the work; the inter-op pool is
    set to 1 thread where torch still allows it (a second pool of N threads only competes for
    the same cores, because the detector runs its operators one after another). Safe to call
    more than once; a later call only changes the intra-op count.
    """
    global _configured
    wanted = threads if threads is not None else int(os.environ.get("MICROCALCAI_THREADS", "0") or 0)
    n = int(wanted) if wanted and int(wanted) > 0 else available_cpus()
    if _configured == n:
        return n
    torch.set_num_threads(n)
    if _configured is None:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # the pool already ran something: too late, keep torch's
            log.debug("inter-op threads already started; left at %d", torch.get_num_interop_threads())
        if not _keep_freed_memory(n):
            log.debug("mallopt unavailable: large freed blocks go back to the system")
    _configured = n
    log.debug("torch CPU threads: %d intra-op, %d inter-op", n, torch.get_num_interop_threads())
    return n


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution computing ``bn(conv(x))`` with ``bn``'s eval-mode statistics."""
    fused = copy.deepcopy(conv)
    assert bn.running_var is not None and bn.running_mean is not None
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        fused.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1))
        fused.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
    return fused


def _foldable(conv: object, bn: object) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and type(bn) is nn.BatchNorm2d
        and bn.track_running_stats
        and bn.running_mean is not None
        and conv.out_channels == bn.num_features
    )


def fuse_batch_norm(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d into the convolution that feeds it, in place.

    Two patterns cover torchvision's backbones: a conv followed by its norm inside a
    ``Sequential`` (mobilenet's Conv2dNormActivation, ResNet's downsample) and ResNet's
    ``convN`` / ``bnN`` attribute pairs. Returns how many norms were folded; the module is
    only valid for inference afterwards.
    """
    folded = 0
    for child in list(module.children()):
        folded += fuse_batch_norm(child)
    names = list(module._modules)
    if isinstance(module, nn.Sequential):
        for first, second in zip(names, names[1:]):
            conv, bn = module._modules[first], module._modules[second]
            if _foldable(conv, bn):
                module._modules[first] = _fold(conv, bn)  # type: ignore[arg-type]
                module._modules[second] = nn.Identity()
                folded += 1
    else:
        for name in names:
            if name.startswith("conv") and f"bn{name[4:]}" in module._modules:
                bn_name = f"bn{name[4:]}"
                conv, bn = cast(nn.Conv2d, module._modules[name]), cast(nn.BatchNorm2d, module._modules[bn_name])
                if _foldable(conv, bn):
                    module._modules[name] = _fold(conv, bn)
                    module._modules[bn_name] = nn.Identity()
                    folded += 1
    return folded


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """An inference-only copy of a detector: eval mode, batch norm folded, backbone
    channels-last. The input model is left as it was (it may be trained further)."""
    ready = copy.deepcopy(model).eval()
    for parameter in ready.parameters():
        parameter.requires_grad_(False)
    folded = fuse_batch_norm(ready)
    backbone = getattr(ready, "backbone", None)
    if backbone is not None:
        backbone.to(memory_format=torch.channels_last)
    ready.microcalcai_inference_ready = True  # type: ignore[assignment]
    log.debug("inference copy: %d batch norm(s) folded, backbone channels-last", folded)
    return ready


def _cache_key(spec: ModelSpec, device: torch.device, backend: str) -> tuple[str, str, int, int, str, str]:
    path = Path(spec.weights_path).resolve()
    st = path.stat()
    return (str(path), spec.sha256.lower(), st.st_size, st.st_mtime_ns, str(device), backend)


def _build(spec: ModelSpec, device: torch.device, backend: str) -> nn.Module:
    from MicrocalcAI.core.detect.backends import with_exported_backbone
    from MicrocalcAI.core.detect.weights import load_detector

    model = prepare_for_inference(load_detector(spec, device))
    with_exported_backbone(model, spec, backend)
    return model


def cached_detector(
    spec: ModelSpec, device: Union[str, torch.device] = "cpu", backend: Optional[str] = None
) -> nn.Module:
    """The detector of ``spec`` on ``device``, loaded, verified and prepared once per process.

    ``backend`` (default: ``MICROCALCAI_BACKEND``, else ``auto``) may run the backbone + FPN
    in ONNX Runtime or OpenVINO on a CPU (:mod:`MicrocalcAI.core.detect.backends`). The cache
    key includes the weights file's size and modification time, so replacing the file loads
    (and checksums) it again. A missing file falls through to
    :func:`~MicrocalcAI.core.detect.weights.load_detector`, which reports it.
    """
    from MicrocalcAI.core.detect.backends import choose_backend

    target = torch.device(device)
    chosen = choose_backend(backend, target)
    try:
        key = _cache_key(spec, target, chosen)
    except OSError:
        return _build(spec, target, chosen)
    with _cache_lock:
        model = _cache.get(key)
        if model is None:
            model = _build(spec, target, chosen)
            _cache[key] = model
    return model


def clear_detector_cache() -> None:
    """Forget every cached detector (tests; freeing memory in a long Slicer session)."""
    with _cache_lock:
        _cache.clear()
