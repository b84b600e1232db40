"""Fit a model's out-of-distribution reference from COCO files and record it in its manifest.

The reference (:mod:`MicrocalcAI.core.ood.reference`) learns the input statistics and
backbone features of the images the model was *trained* on, and chooses its threshold on
images it was *not* trained on (the validation set). Every image is measured through the
very pipeline users run (:meth:`MicrocalcAI.core.pipeline.Analyzer.measure_ood`: same
reading, standardisation and detection pass), so the reference sees what inference sees.

The result is a side file ``<weights name>.ood.npz`` next to the weights and an ``"ood"``
block (file, sha256) in the model's manifest entry; nothing else in the entry changes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from MicrocalcAI.core.atomic import atomic_write_text
from MicrocalcAI.core.detect.manifest import MANIFEST_NAME, ModelSpec, load_manifest
from MicrocalcAI.core.errors import CancelledError, MicrocalcAIError, ModelError
from MicrocalcAI.core.ood.reference import OodReference, fit_reference, save_reference
from MicrocalcAI.core.progress import ProgressCallback, no_progress
from MicrocalcAI.core.read import read_mammogram
from MicrocalcAI.datasets.coco import CocoImage, parse_coco

__all__ = ["DEFAULT_REFERENCE_TRAIN_IMAGES", "coco_entries", "fit_model_reference", "measure_images", "spread_subset"]

log = logging.getLogger(__name__)


def coco_entries(coco_files: Sequence[os.PathLike | str]) -> list[CocoImage]:
    """The image entries of one or more COCO files, in order."""
    entries: list[CocoImage] = []
    for coco in coco_files:
        entries.extend(parse_coco(coco))
    return entries


#: Training images an OOD reference is fitted on by default (evenly spread over the training
#: set). The input statistics' accepted ranges come from these images: 200 of model 0.5.0's
#: 1,800 varied images left a real film as stored outside one range (docs/confidence.md), so
#: the default is 400.
DEFAULT_REFERENCE_TRAIN_IMAGES = 400


def spread_subset(items: list[Any], limit: Optional[int]) -> list[Any]:
    """At most ``limit`` items evenly spread over ``items`` (deterministic; all when None)."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        return []
    pick = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in sorted(set(pick.tolist()))]


def measure_images(
    analyzer: Any, entries: Sequence[CocoImage], progress: ProgressCallback = no_progress
) -> tuple[list[dict[str, float]], np.ndarray, list[str]]:
    """(statistics, descriptors (N, D), paths) of the images that could be measured; an image
    that cannot be read, or gives no descriptor, is logged and left out."""
    statistics: list[dict[str, float]] = []
    descriptors: list[np.ndarray] = []
    paths: list[str] = []
    n = max(len(entries), 1)
    for i, entry in enumerate(entries):
        progress(i / n, f"[{i + 1}/{len(entries)}] {entry.path.name}")
        try:
            mammogram = read_mammogram(entry.path)
            if mammogram.spacing_mm is None and entry.spacing_mm is not None:
                mammogram.spacing_mm = (entry.spacing_mm, entry.spacing_mm)
                mammogram.spacing_source = "user"
            stats, descriptor = analyzer.measure_ood(mammogram)
        except CancelledError:
            raise
        except MicrocalcAIError as exc:
            log.warning("%s: %s; left out of the OOD reference", entry.path, exc)
            continue
        if descriptor is None:
            log.warning("%s: no feature descriptor; left out of the OOD reference", entry.path)
            continue
        statistics.append(stats)
        descriptors.append(descriptor)
        paths.append(str(entry.path))
    progress(1.0, f"measured {len(paths)} image(s)")
    return statistics, np.asarray(descriptors, dtype=np.float64), paths


def _entry(manifest: Path, name: Optional[str]) -> tuple[ModelSpec, bool]:
    default, specs = load_manifest(manifest)
    wanted = name or default or (specs[0].name if specs else None)
    for spec in specs:
        if spec.name == wanted:
            return spec, spec.name == default
    raise ModelError(f"no model named {wanted!r} in {manifest}; known: {[s.name for s in specs]}")


def _record_in_manifest(manifest: Path, name: str, ood: dict[str, str]) -> None:
    """Set the ``ood`` block of one entry, leaving every other byte of meaning as it was."""
    data = json.loads(manifest.read_text(encoding="utf-8"))
    for entry in data.get("models", []):
        if entry.get("name") == name:
            entry["ood"] = ood
    atomic_write_text(manifest, json.dumps(data, indent=2) + "\n")


def fit_model_reference(
    manifest: os.PathLike | str,
    train_coco: Sequence[os.PathLike | str],
    val_coco: Sequence[os.PathLike | str],
    *,
    name: Optional[str] = None,
    max_train: Optional[int] = DEFAULT_REFERENCE_TRAIN_IMAGES,
    max_val: Optional[int] = None,
    n_components: int = 16,
    device: Optional[str] = "auto",
    progress: ProgressCallback = no_progress,
) -> tuple[ModelSpec, OodReference]:
    """Fit the OOD reference of model ``name`` (default: the manifest's default) of
    ``manifest`` (file or folder) and record it there; return (updated entry, reference).

    ``train_coco``: images the model was trained on (``max_train`` of them, evenly spread);
    ``val_coco``: images it was not trained on, for the threshold. Both are checked before
    any image is measured.
    """
    from MicrocalcAI.core.pipeline import Analyzer

    path = Path(manifest)
    if path.is_dir():
        path = path / MANIFEST_NAME
    spec, _ = _entry(path, name)
    train_entries = spread_subset(coco_entries(train_coco), max_train)
    val_entries = spread_subset(coco_entries(val_coco), max_val)
    if not train_entries or not val_entries:
        raise ModelError("fitting an OOD reference needs training and validation images")
    # The entry's weights file identifies it within its manifest (resolve_model's rule).
    analyzer = Analyzer(str(spec.weights_path), device, ood_check=False)
    if analyzer.spec.name != spec.name:
        raise ModelError(f"{spec.weights_path} resolves to model {analyzer.spec.name!r}, not {spec.name!r}")

    def part(lo: float, hi: float) -> ProgressCallback:
        return lambda f, m: progress(lo + (hi - lo) * f, m)

    train_stats, train_desc, _ = measure_images(analyzer, train_entries, part(0.0, 0.8))
    val_stats, val_desc, _ = measure_images(analyzer, val_entries, part(0.8, 0.98))
    reference = fit_reference(
        train_stats, train_desc, val_stats, val_desc, model_sha256=spec.sha256, n_components=n_components
    )
    reference.info["train_data"] = [str(c) for c in train_coco]
    reference.info["val_data"] = [str(c) for c in val_coco]
    file_name = f"{Path(spec.file).stem}.ood.npz"
    sha = save_reference(reference, path.parent / file_name)
    _record_in_manifest(path, spec.name, {"file": file_name, "sha256": sha})
    updated, _ = _entry(path, spec.name)
    progress(1.0, f"OOD reference {file_name}: threshold {reference.threshold:.3f}")
    log.info(
        "OOD reference of %s written to %s (threshold %.3f)", spec.name, path.parent / file_name, reference.threshold
    )
    return updated, reference
