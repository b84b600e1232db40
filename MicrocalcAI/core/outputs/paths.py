"""Where an image's output files go, by name, inside an output folder.

One place for the file names (``<name>.json``, ``<name>_overlay.png``, ``<table>.csv``), so
the writers and the "is this image done" check cannot disagree about them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from MicrocalcAI.core.errors import OutputError

__all__ = ["PathLike", "json_path", "output_path", "overlay_path"]

PathLike = Union[str, "os.PathLike[str]"]


def output_path(out_dir: PathLike, name: str, suffix: str) -> Path:
    """``out_dir/<name><suffix>``, refusing names that would escape ``out_dir``."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise OutputError(f"invalid output name {name!r}: it must be a plain file name")
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {folder}: {exc}") from exc
    return folder / f"{name}{suffix}"


def json_path(name: str, out_dir: PathLike) -> Path:
    """Where the JSON of image ``name`` goes."""
    return Path(out_dir) / f"{name}.json"


def overlay_path(name: str, out_dir: PathLike) -> Path:
    """Where the overlay PNG of image ``name`` goes."""
    return Path(out_dir) / f"{name}_overlay.png"
