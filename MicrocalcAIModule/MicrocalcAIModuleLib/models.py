"""Models the module offers: the bundled ones, and users' own imported weights.

A model is always a manifest entry plus its weights (see :mod:`MicrocalcAI.core.detect.manifest`): the
entry says the backbone, canonical spacing, tiling, thresholds and sha256, so a weights file
on its own is refused. Importing copies the checked entry and weights into the user's model
folder (one sub-folder per model, with its own ``manifest.json``), so imported models appear
in the selector in later sessions and keep working if the original file moves.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

__all__ = [
    "ModelChoice",
    "PathLike",
    "available_models",
    "bundled_models",
    "find_manifest_entry",
    "import_model",
    "imported_models",
    "model_card_html",
]


log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class ModelChoice:
    """One entry of the model selector."""

    label: str  # shown to the user
    reference: str  # what ``Analyzer(model=...)`` takes: a bundled name or a manifest path
    spec: Any  # MicrocalcAI.core.detect.manifest.ModelSpec
    bundled: bool


def bundled_models() -> list[ModelChoice]:
    """The models of the bundled manifest, default first (empty with a log line if none)."""
    from MicrocalcAI.core.detect.manifest import load_manifest
    from MicrocalcAI.core.errors import ModelError

    try:
        default, specs = load_manifest()
    except ModelError as exc:
        log.warning("no bundled model: %s", exc)
        return []
    specs = sorted(specs, key=lambda s: s.name != default)
    return [
        ModelChoice(
            label=f"{s.name} {s.version}" + (" (default)" if s.name == default else ""),
            reference=s.name,
            spec=s,
            bundled=True,
        )
        for s in specs
    ]


def imported_models(user_models_dir: Optional[PathLike]) -> list[ModelChoice]:
    """Models imported earlier into ``user_models_dir`` (each sub-folder holds a manifest)."""
    from MicrocalcAI.core.detect.manifest import MANIFEST_NAME, load_manifest
    from MicrocalcAI.core.errors import ModelError

    if not user_models_dir or not Path(user_models_dir).is_dir():
        return []
    out = []
    for folder in sorted(p for p in Path(user_models_dir).iterdir() if (p / MANIFEST_NAME).is_file()):
        try:
            default, specs = load_manifest(folder)
        except ModelError as exc:
            log.warning("skipping imported model in %s: %s", folder, exc)
            continue
        for spec in specs:
            if default is None or spec.name == default:
                out.append(
                    ModelChoice(f"{spec.name} {spec.version} (imported)", str(folder / MANIFEST_NAME), spec, False)
                )
                break
    return out


def available_models(user_models_dir: Optional[PathLike] = None) -> list[ModelChoice]:
    """Bundled models (default first), then the user's imported ones."""
    return bundled_models() + imported_models(user_models_dir)


def model_card_html(spec: Any) -> str:
    """A short model card for the panel: what the model is, how it was made, how good it is."""
    esc = html.escape
    rows = [
        ("Model", f"{spec.name} {spec.version}"),
        ("Backbone", f"Faster R-CNN + FPN, {spec.backbone}"),
        (
            "Canonical spacing",
            f"{spec.spacing_mm:g} mm (inputs without spacing: {spec.assumed_input_spacing_mm:g} mm assumed, "
            "unless the image cannot be a whole mammogram at it)",
        ),
        ("Default score threshold", f"{spec.score_threshold:.2f}"),
        ("Operating points (P malignant)", ", ".join(f"{k} {v:.2f}" for k, v in spec.operating_points.items()) or "-"),
        ("Risk categories", ", ".join(f"{c.name} from {c.min_probability:.2f}" for c in spec.risk_categories)),
        ("sha256", spec.sha256[:16] + "..."),
    ]
    if spec.training_data:
        rows.append(("Training data", spec.training_data))
    metrics = _flat_metrics(spec.metrics)
    if metrics:
        rows.append(("Measured", ", ".join(f"{k} {v}" for k, v in metrics[:8])))
    body = "".join(f"<tr><td><b>{esc(k)}</b></td><td>{esc(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table><p><i>{esc(spec.intended_use)}</i></p>"


def _flat_metrics(metrics: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Numeric leaves of a nested metrics dict as ("path to value", "0.123")."""
    out: list[tuple[str, str]] = []
    if isinstance(metrics, dict):
        for key, value in metrics.items():
            out += _flat_metrics(value, f"{prefix} {key}".strip())
    elif isinstance(metrics, (int, float)) and not isinstance(metrics, bool):
        out.append((prefix, f"{metrics:.3g}"))
    return out


def _safe_folder_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


def find_manifest_entry(weights: Path, manifest: Optional[Path] = None) -> Any:
    """The manifest entry describing ``weights`` (its own manifest or the sibling one).

    Raises ModelError when no entry lists the file: without an entry nothing says which
    backbone, spacing and thresholds the weights need, so they cannot be used safely.
    """
    from MicrocalcAI.core.detect.manifest import MANIFEST_NAME, load_manifest
    from MicrocalcAI.core.errors import ModelError

    manifest = manifest or weights.parent / MANIFEST_NAME
    if not manifest.is_file():
        raise ModelError(
            f"no manifest found for {weights.name}: put a {MANIFEST_NAME} listing it (name, backbone, sha256, ...) "
            "next to the weights, or choose the manifest file itself"
        )
    _, specs = load_manifest(manifest)
    for spec in specs:
        try:
            same = spec.weights_path.resolve() == weights.resolve()
        except OSError:
            same = False
        if same or Path(spec.file).name == weights.name:
            return spec
    raise ModelError(f"{weights.name} is not listed in {manifest}; known weights: {[s.file for s in specs]}")


def import_model(source: PathLike, user_models_dir: PathLike, *, manifest: Optional[PathLike] = None) -> ModelChoice:
    """Import a user's model into ``user_models_dir`` after checking it against its manifest.

    ``source`` is a weights file (listed in ``manifest`` or in the ``manifest.json`` next to
    it) or a manifest file (its default entry is imported). The weights' sha256 must match
    the entry (a mismatch is an error, never a warning). Files are copied atomically; an
    import of the same model again replaces the earlier copy.
    """
    from MicrocalcAI.core.atomic import atomic_write_text
    from MicrocalcAI.core.detect.manifest import MANIFEST_NAME, resolve_model, verify_weights
    from MicrocalcAI.core.errors import ModelError

    source = Path(source)
    if not source.is_file():
        raise ModelError(f"{source} does not exist")
    if source.suffix.lower() == ".json":
        spec = resolve_model(str(source))
    else:
        spec = find_manifest_entry(source, Path(manifest) if manifest else None)
    weights = verify_weights(spec)  # raises ChecksumError on mismatch

    target = Path(user_models_dir) / _safe_folder_name(f"{spec.name}-{spec.version}")
    target.mkdir(parents=True, exist_ok=True)
    dest_weights = target / weights.name
    if not (
        dest_weights.is_file()
        and dest_weights.stat().st_size == weights.stat().st_size
        and dest_weights.resolve() == weights.resolve()
    ):
        fd, tmp = tempfile.mkstemp(prefix=f".{weights.name}.", suffix=".tmp", dir=target)
        os.close(fd)
        try:
            shutil.copyfile(weights, tmp)
            os.replace(tmp, dest_weights)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    entry = spec.to_json()
    entry["file"] = weights.name
    doc = {"schema_version": 1, "default": spec.name, "models": [entry]}
    atomic_write_text(target / MANIFEST_NAME, json.dumps(doc, indent=2) + "\n")
    imported = resolve_model(str(target / MANIFEST_NAME))
    verify_weights(imported)
    log.info("imported model %s %s into %s", spec.name, spec.version, target)
    return ModelChoice(f"{spec.name} {spec.version} (imported)", str(target / MANIFEST_NAME), imported, False)
