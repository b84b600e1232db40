"""Helpers for test_ood.py: real-film crops as a small training-like set, and a model folder
whose manifest entry names an OOD reference."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from MicrocalcAI.core.detect.manifest import MANIFEST_NAME, ModelSpec
from MicrocalcAI.core.ood.reference import OodReference, save_reference
from MicrocalcAI.core.read import read_mammogram
from MicrocalcAI.core.records import Mammogram
from MicrocalcAI.simulation.config import CBIS_SPACING_MM


def film(path: Path) -> Mammogram:
    m = read_mammogram(path)
    return replace(m, spacing_mm=(CBIS_SPACING_MM, CBIS_SPACING_MM), spacing_source="user")


def crops(m: Mammogram, count: int, size: tuple[int, int] = (1000, 800), offset: int = 0) -> list[Mammogram]:
    """``count`` windows of a film, spread down its middle column band, all inside the breast
    side (the breast is centred on the image's left or right half: take the brighter half)."""
    rows, cols = m.pixels.shape
    left = m.pixels[:, : cols // 2].mean() > m.pixels[:, cols // 2 :].mean()
    c0 = cols // 2 - size[1] - 100 if left else cols // 2 + 100
    r_starts = np.linspace(rows * 0.2, rows * 0.8 - size[0], count + offset).astype(int)[offset:]
    return [replace(m, pixels=np.ascontiguousarray(m.pixels[r : r + size[0], c0 : c0 + size[1]])) for r in r_starts]


def model_folder(tmp: Path, spec: ModelSpec, reference: OodReference) -> Path:
    """A copy of ``spec``'s manifest entry (weights referenced by absolute path) with the
    reference written next to it and named in its ``ood`` block."""
    tmp.mkdir(parents=True, exist_ok=True)
    sha = save_reference(reference, tmp / "model.ood.npz")
    entry = spec.to_json()
    entry["file"] = str(spec.weights_path.resolve())
    entry["ood"] = {"file": "model.ood.npz", "sha256": sha}
    (tmp / MANIFEST_NAME).write_text(json.dumps({"schema_version": 1, "default": spec.name, "models": [entry]}))
    return tmp


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
