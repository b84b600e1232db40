"""The findings JSON of one image: write it, read it back exactly, and its speck-mask RLE.

The JSON is the complete, versioned record of one image (documented in
``docs/output-format.md``, schema in ``Resources/Schemas/findings.schema.json``); it can be
read back exactly (:func:`load_image_json`) so a re-run skips finished images and still
rebuilds the breast and exam tables. It is written atomically
(:mod:`MicrocalcAI.core.atomic`): a temporary file in the same folder is renamed over the
target, so an interrupted run never leaves a half file that a later run would mistake for a
finished one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np

from MicrocalcAI import __version__
from MicrocalcAI.core.atomic import atomic_write_text
from MicrocalcAI.core.errors import OutputError, UnreadableFileError
from MicrocalcAI.core.outputs.paths import PathLike, output_path
from MicrocalcAI.core.records import ImageFindings, Lesion, ModelInfo, OodCheck, Risk, Speck

__all__ = [
    "READABLE_SCHEMA_VERSIONS",
    "SCHEMA_VERSION",
    "TOOL_NAME",
    "dumps_readable",
    "findings_from_json",
    "findings_to_json",
    "load_image_json",
    "mask_to_rle",
    "ood_from_json",
    "ood_to_json",
    "rle_to_mask",
    "write_image_json",
]

log = logging.getLogger(__name__)

#: 1.1 added the ``"ood"`` block (out-of-distribution check) and the "indeterminate" category.
#: 1.2 added ``model.settings_sha256`` (the manifest entry's settings, not only the weights).
SCHEMA_VERSION = "1.2"
#: Versions :func:`findings_from_json` reads: 1.0 files have no ``"ood"`` (read as None).
READABLE_SCHEMA_VERSIONS = ("1.0", "1.1", SCHEMA_VERSION)
TOOL_NAME = "MicrocalcAI"


# --------------------------------------------------------------------------- run-length encoding


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Run lengths of a bool mask in row-major order, starting with a (possibly 0) False run.

    ``[3, 2, 4]`` on a 3x3 mask means 3 False, 2 True, 4 False. Runs sum to ``h * w``.
    """
    flat = np.asarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return []
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    return ([0] + runs) if flat[0] else runs


def rle_to_mask(rle: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`mask_to_rle`; rejects runs that do not fill ``shape`` exactly."""
    h, w = int(shape[0]), int(shape[1])
    runs = np.asarray(list(rle), dtype=np.int64)
    if h < 0 or w < 0 or np.any(runs < 0) or int(runs.sum()) != h * w:
        raise UnreadableFileError(f"speck mask RLE does not describe a {h}x{w} mask")
    values = np.arange(runs.size) % 2 == 1  # runs alternate False, True, False, ...
    return np.repeat(values, runs).reshape(h, w)


# --------------------------------------------------------------------------- JSON


def _float_list(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values]


def _lesion_to_json(lesion: Lesion) -> dict[str, Any]:
    mask = np.asarray(lesion.speck_mask, dtype=bool)
    return {
        "id": int(lesion.id),
        "label": lesion.label,
        "score": float(lesion.score),
        "p_malignant": float(lesion.p_malignant),
        "box_px": _float_list(lesion.box_px),
        "box_mm": _float_list(lesion.box_mm),
        "area_mm2": float(lesion.area_mm2),
        "speck_count": lesion.speck_count,
        "specks": [
            {
                "centroid_px": _float_list(s.centroid_px),
                "area_px": int(s.area_px),
                "area_mm2": float(s.area_mm2),
                "diameter_mm": float(s.diameter_mm),
            }
            for s in lesion.specks
        ],
        "speck_mask": {
            "origin": [int(lesion.mask_origin[0]), int(lesion.mask_origin[1])],
            "shape": [int(mask.shape[0]), int(mask.shape[1])],
            "rle": mask_to_rle(mask),
        },
    }


def ood_to_json(ood: Optional[OodCheck]) -> Optional[dict[str, Any]]:
    """The ``"ood"`` block: None (JSON null) when the model ships no OOD reference."""
    if ood is None:
        return None
    return {
        "score": float(ood.score),
        "threshold": float(ood.threshold),
        "flagged": bool(ood.flagged),
        "reasons": [str(r) for r in ood.reasons],
        "measurements": {str(k): float(v) for k, v in ood.measurements.items()},
    }


def ood_from_json(d: Optional[dict[str, Any]]) -> Optional[OodCheck]:
    """Inverse of :func:`ood_to_json`."""
    if d is None:
        return None
    flagged = d["flagged"]
    if not isinstance(flagged, bool):
        raise TypeError(f"ood.flagged must be true or false, got {flagged!r}")
    return OodCheck(
        score=float(d["score"]),
        threshold=float(d["threshold"]),
        flagged=flagged,
        reasons=[str(r) for r in d["reasons"]],
        measurements={str(k): float(v) for k, v in d["measurements"].items()},
    )


def findings_to_json(f: ImageFindings, *, created: Optional[datetime] = None) -> dict[str, Any]:
    """The JSON document of one image (see ``docs/output-format.md``)."""
    created = created or datetime.now(timezone.utc)
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": TOOL_NAME, "version": __version__},
        "created": created.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "input": {
            "source": f.source,
            "name": f.name,
            "shape": [int(f.image_shape[0]), int(f.image_shape[1])],
            "spacing_mm": _float_list(f.spacing_mm),
            "spacing_source": f.spacing_source,
            "photometric": f.photometric,
            "laterality": f.laterality,
            "laterality_source": f.laterality_source,
            "view": f.view,
            "view_source": f.view_source,
            "presentation_intent": f.presentation_intent,
            "patient_id": f.patient_id,
            "study_uid": f.study_uid,
            "series_uid": f.series_uid,
            "sop_uid": f.sop_uid,
            "manufacturer": f.manufacturer,
            "fingerprint": f.input_fingerprint,
        },
        "model": {
            "name": f.model.name,
            "version": f.model.version,
            "sha256": f.model.sha256,
            "backbone": f.model.backbone,
            "spacing_mm": float(f.model.spacing_mm),
            "settings_sha256": f.model.settings_sha256,
        },
        "score_threshold": float(f.score_threshold),
        "lesions": [_lesion_to_json(les) for les in f.lesions],
        "risk": {"probability": float(f.risk.probability), "category": f.risk.category},
        "ood": ood_to_json(f.ood),
        "warnings": [str(w) for w in f.warnings],
        "timings_s": {str(k): float(v) for k, v in f.timings_s.items()},
    }


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def dumps_readable(value: Any, indent: int = 2, _level: int = 0) -> str:
    """JSON with nested objects indented but lists of numbers on one line.

    Plain ``indent=2`` puts every run length and box coordinate on its own line, which makes
    files long and hard to read; this keeps them compact without losing structure.
    """
    pad, inner = " " * (indent * _level), " " * (indent * (_level + 1))
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(str(k))}: {dumps_readable(v, indent, _level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, (list, tuple)):
        if all(_is_scalar(v) for v in value):
            return "[" + ", ".join(json.dumps(v, allow_nan=False) for v in value) + "]"
        return "[\n" + ",\n".join(inner + dumps_readable(v, indent, _level + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value, allow_nan=False)


def write_image_json(f: ImageFindings, out_dir: PathLike) -> Path:
    """Write ``<name>.json`` atomically and return its path."""
    path = output_path(out_dir, f.name, ".json")
    try:
        text = dumps_readable(findings_to_json(f)) + "\n"
    except ValueError as exc:  # NaN/inf would make invalid JSON
        raise OutputError(f"findings of {f.name!r} contain a non-finite number: {exc}") from exc
    return atomic_write_text(path, text)


def _opt_str(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _lesion_from_json(d: dict[str, Any]) -> Lesion:
    m = d["speck_mask"]
    shape = (int(m["shape"][0]), int(m["shape"][1]))
    specks = [
        Speck(
            centroid_px=(float(s["centroid_px"][0]), float(s["centroid_px"][1])),
            area_px=int(s["area_px"]),
            area_mm2=float(s["area_mm2"]),
            diameter_mm=float(s["diameter_mm"]),
        )
        for s in d["specks"]
    ]
    if len(specks) != int(d["speck_count"]):
        raise UnreadableFileError(f"lesion {d.get('id')}: speck_count {d['speck_count']} but {len(specks)} specks")
    return Lesion(
        id=int(d["id"]),
        box_px=tuple(float(v) for v in d["box_px"]),  # type: ignore[arg-type]
        box_mm=tuple(float(v) for v in d["box_mm"]),  # type: ignore[arg-type]
        label=str(d["label"]),
        score=float(d["score"]),
        p_malignant=float(d["p_malignant"]),
        area_mm2=float(d["area_mm2"]),
        speck_mask=rle_to_mask(m["rle"], shape),
        mask_origin=(int(m["origin"][0]), int(m["origin"][1])),
        specks=specks,
    )


def findings_from_json(doc: dict[str, Any]) -> ImageFindings:
    """Rebuild :class:`ImageFindings` from a JSON document of a readable schema version
    (:data:`READABLE_SCHEMA_VERSIONS`; a 1.0 document has no OOD check: ``ood`` is None)."""
    if not isinstance(doc, dict) or doc.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        version = doc.get("schema_version") if isinstance(doc, dict) else None
        raise UnreadableFileError(
            f"findings JSON has schema_version {version!r}, expected one of {list(READABLE_SCHEMA_VERSIONS)}"
        )
    try:
        inp, model, risk = doc["input"], doc["model"], doc["risk"]
        return ImageFindings(
            source=_opt_str(inp["source"]),
            name=str(inp["name"]),
            image_shape=(int(inp["shape"][0]), int(inp["shape"][1])),
            spacing_mm=(float(inp["spacing_mm"][0]), float(inp["spacing_mm"][1])),
            spacing_source=str(inp["spacing_source"]),
            photometric=str(inp["photometric"]),
            laterality=_opt_str(inp["laterality"]),
            laterality_source=_opt_str(inp["laterality_source"]),
            view=_opt_str(inp["view"]),
            view_source=_opt_str(inp["view_source"]),
            presentation_intent=_opt_str(inp["presentation_intent"]),
            patient_id=_opt_str(inp["patient_id"]),
            study_uid=_opt_str(inp["study_uid"]),
            series_uid=_opt_str(inp["series_uid"]),
            sop_uid=_opt_str(inp["sop_uid"]),
            manufacturer=_opt_str(inp["manufacturer"]),
            input_fingerprint=_opt_str(inp.get("fingerprint")),
            lesions=[_lesion_from_json(d) for d in doc["lesions"]],
            risk=Risk(probability=float(risk["probability"]), category=str(risk["category"])),
            model=ModelInfo(
                name=str(model["name"]),
                version=str(model["version"]),
                sha256=str(model["sha256"]),
                backbone=str(model["backbone"]),
                spacing_mm=float(model["spacing_mm"]),
                settings_sha256=_opt_str(model.get("settings_sha256")),
            ),
            score_threshold=float(doc["score_threshold"]),
            warnings=[str(w) for w in doc["warnings"]],
            timings_s={str(k): float(v) for k, v in doc["timings_s"].items()},
            ood=ood_from_json(doc["ood"]) if doc["schema_version"] != "1.0" else None,
        )
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise UnreadableFileError(f"findings JSON is malformed: {type(exc).__name__}: {exc}") from exc


def load_image_json(path: PathLike) -> ImageFindings:
    """Read back a file written by :func:`write_image_json`, speck masks included."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UnreadableFileError(f"findings file not found: {path}") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UnreadableFileError(f"findings file {path} is not readable JSON: {exc}") from exc
    try:
        return findings_from_json(doc)
    except UnreadableFileError as exc:
        raise UnreadableFileError(f"{path}: {exc}") from exc
