"""A really full output disk for tests: a small tmpfs, mounted when the tests run as root."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def nearly_full_disk(folder: Path, free_kib: int = 48, size_kib: int = 1024) -> Iterator[Path]:
    """``folder`` as a tmpfs of ``size_kib`` with only about ``free_kib`` left: writes fail with ENOSPC.

    Skips the test where mounting is not permitted (not root, or a container without
    CAP_SYS_ADMIN); the fault-injection test in test_disk_full.py covers those machines.
    """
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        (folder / "filler").write_bytes(b"\0" * ((size_kib - free_kib) * 1024))
        out = folder / "out"
        out.mkdir()
        yield out
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
