"""Files a run leaves behind: per-image JSON and overlay PNG, per-batch CSV tables.

The JSON is the complete, versioned record of one image (documented in
``docs/output-format.md``, schema in ``Resources/Schemas/findings.schema.json``); it can be
read back exactly (:func:`load_image_json`) so a re-run skips finished images and still
rebuilds the breast and exam tables. Every file is written atomically: a temporary file in
the same folder is renamed over the target, so an interrupted run never leaves a half file
that a later run would mistake for a finished one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from MicrocalcAI import __version__
from MicrocalcAI.core.atomic import atomic_write_bytes, atomic_write_text  # noqa: F401  (also part of this module's API)
from MicrocalcAI.core.errors import OutputError, UnreadableFileError
from MicrocalcAI.core.records import BreastFindings, ExamFindings, ImageFindings, Lesion, ModelInfo, Risk, Speck

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1.0"
TOOL_NAME = "MicrocalcAI"

PathLike = Union[str, "os.PathLike[str]"]

#: Overlay colours (RGB): boxes by class, speck outlines, label text background.
CLASS_COLOURS = {"malignant": (255, 0, 0), "benign": (255, 255, 0)}
SPECK_COLOUR = (0, 255, 255)
TEXT_BACKGROUND = (0, 0, 0)


def _output_path(out_dir: PathLike, name: str, suffix: str) -> Path:
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
        },
        "score_threshold": float(f.score_threshold),
        "lesions": [_lesion_to_json(les) for les in f.lesions],
        "risk": {"probability": float(f.risk.probability), "category": f.risk.category},
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
    path = _output_path(out_dir, f.name, ".json")
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
    """Rebuild :class:`ImageFindings` from a JSON document of the current schema version."""
    if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
        version = doc.get("schema_version") if isinstance(doc, dict) else None
        raise UnreadableFileError(f"findings JSON has schema_version {version!r}, expected {SCHEMA_VERSION!r}")
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
            ),
            score_threshold=float(doc["score_threshold"]),
            warnings=[str(w) for w in doc["warnings"]],
            timings_s={str(k): float(v) for k, v in doc["timings_s"].items()},
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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_complete(path: Path) -> bool:
    """True when the file starts with the PNG signature and ends with the IEND chunk."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            fh.seek(0, os.SEEK_END)
            if fh.tell() < 20:
                return False
            fh.seek(-12, os.SEEK_END)
            tail = fh.read(12)
    except OSError:
        return False
    return head == _PNG_SIGNATURE and tail[4:8] == b"IEND"


def outputs_complete(name: str, out_dir: PathLike) -> bool:
    """Whether image ``name`` already has a current-schema JSON and a whole overlay PNG.

    Lets a re-run skip finished images; anything doubtful (unparsable or older-schema JSON,
    missing or cut overlay) answers False so the image is redone.
    """
    try:
        doc = json.loads(json_path(name, out_dir).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
        return False
    return _png_complete(overlay_path(name, out_dir))


# --------------------------------------------------------------------------- overlay


def _font(size_px: int) -> Any:
    """Pillow's bundled scalable font (no system fonts needed); bitmap font on old Pillow."""
    try:
        return ImageFont.load_default(size=size_px)  # type: ignore[call-arg]
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _grey_overlay_base(stored01: np.ndarray, size: tuple[int, int]) -> Image.Image:
    grey = np.clip(np.nan_to_num(np.asarray(stored01, dtype=np.float32)), 0.0, 1.0)
    img = Image.fromarray(np.round(grey * 255).astype(np.uint8))
    if img.size != size:
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img.convert("RGB")


def _speck_outline_points(
    lesion: Lesion, sy: float, sx: float, out_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Overlay pixels of a ring just outside each speck, from the speck mask.

    Mask pixels are mapped to the overlay by their centres (a speck never vanishes when the
    overlay is downsampled), then the one-pixel ring around them is the outline.
    """
    rr, cc = np.nonzero(np.asarray(lesion.speck_mask, dtype=bool))
    if rr.size == 0:
        return rr, cc
    oy = np.floor((rr + lesion.mask_origin[0] + 0.5) * sy).astype(np.int64)
    ox = np.floor((cc + lesion.mask_origin[1] + 0.5) * sx).astype(np.int64)
    y0, x0 = int(oy.min()) - 2, int(ox.min()) - 2
    local = np.zeros((int(oy.max()) - y0 + 3, int(ox.max()) - x0 + 3), dtype=bool)
    local[oy - y0, ox - x0] = True
    ring = ndi.binary_dilation(local, structure=np.ones((3, 3), dtype=bool)) & ~local
    ry, rx = np.nonzero(ring)
    ry, rx = ry + y0, rx + x0
    inside = (ry >= 0) & (rx >= 0) & (ry < out_shape[0]) & (rx < out_shape[1])
    return ry[inside], rx[inside]


def _draw_label(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: tuple[int, int, int], font: Any
) -> None:
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=TEXT_BACKGROUND)
    draw.text(xy, text, fill=colour, font=font)


def render_overlay(f: ImageFindings, stored01: np.ndarray, *, max_size: int = 2048) -> Image.Image:
    """The overlay as a Pillow RGB image (see :func:`write_overlay`)."""
    image = np.asarray(stored01)
    if image.ndim != 2 or tuple(image.shape) != tuple(f.image_shape):
        raise OutputError(f"overlay of {f.name!r}: image shape {image.shape} differs from findings {f.image_shape}")
    if max_size < 16:
        raise OutputError(f"overlay max_size must be at least 16 pixels, got {max_size}")
    rows, cols = int(image.shape[0]), int(image.shape[1])
    scale = min(1.0, max_size / max(rows, cols))
    out_w, out_h = max(1, int(round(cols * scale))), max(1, int(round(rows * scale)))
    sx, sy = out_w / cols, out_h / rows
    canvas = _grey_overlay_base(image, (out_w, out_h))
    pixels = np.asarray(canvas).copy()
    for lesion in f.lesions:
        ry, rx = _speck_outline_points(lesion, sy, sx, (out_h, out_w))
        pixels[ry, rx] = SPECK_COLOUR
    canvas = Image.fromarray(pixels)
    draw = ImageDraw.Draw(canvas)
    long_side = max(out_w, out_h)
    line = max(2, int(round(long_side / 700)))
    font = _font(max(12, int(round(long_side / 90))))
    # Draw the least suspicious first so the most suspicious box ends up on top.
    for lesion in sorted(f.lesions, key=lambda les: les.p_malignant):
        colour = CLASS_COLOURS.get(lesion.label, (255, 255, 255))
        x0, y0, x1, y1 = lesion.box_px
        box = (x0 * sx, y0 * sy, max(x1 * sx - 1, x0 * sx), max(y1 * sy - 1, y0 * sy))
        draw.rectangle(box, outline=colour, width=line)
        text = f"L{lesion.id} {lesion.label} {lesion.p_malignant:.2f}"
        text_h = draw.textbbox((0, 0), text, font=font)[3]
        ty = box[1] - text_h - line - 4 if box[1] - text_h - line - 4 >= 0 else box[3] + line + 2
        _draw_label(draw, (box[0], ty), text, colour, font)
    legend = [
        (f"Image risk {f.risk.probability:.2f} ({f.risk.category})", (255, 255, 255)),
        ("red box: malignant lesion", CLASS_COLOURS["malignant"]),
        ("yellow box: benign lesion", CLASS_COLOURS["benign"]),
        ("cyan: calcification specks", SPECK_COLOUR),
        ("number: P(malignant)  -  research use only", (255, 255, 255)),
    ]
    if f.spacing_source == "assumed":
        legend.append((f"WARNING: pixel spacing unknown, assumed {f.spacing_mm[1]:g} mm", (255, 160, 0)))
    if f.warnings:
        legend.append((f"{len(f.warnings)} warning(s): see {f.name}.json", (255, 160, 0)))
    y = 4.0
    for text, colour in legend:
        _draw_label(draw, (6.0, y), text, colour, font)
        y = draw.textbbox((6.0, y), text, font=font)[3] + 6
    return canvas


def write_overlay(f: ImageFindings, stored01: np.ndarray, out_dir: PathLike, *, max_size: int = 2048) -> Path:
    """Write ``<name>_overlay.png``: the image with boxes, labels, specks and the image risk.

    ``stored01`` is the normalised stored-frame image (bright = dense) the findings refer to;
    it is downsampled so its long side is at most ``max_size`` pixels, keeping the pixel
    aspect of the stored grid so overlay coordinates are stored coordinates times one factor.
    """
    path = _output_path(out_dir, f.name, "_overlay.png")
    buffer = io.BytesIO()
    render_overlay(f, stored01, max_size=max_size).save(buffer, format="PNG", optimize=False)
    return atomic_write_bytes(path, buffer.getvalue())


# --------------------------------------------------------------------------- CSV tables

IMAGE_COLUMNS = (
    "name", "source", "patient_id", "study_uid", "series_uid", "sop_uid", "laterality", "view",
    "n_lesions", "n_malignant", "n_specks", "probability", "category", "spacing_row_mm", "spacing_col_mm",
    "spacing_source", "model", "model_version", "score_threshold", "n_warnings", "warnings",
)  # fmt: skip
BREAST_COLUMNS = (
    "patient_id", "study_uid", "laterality", "images", "views", "n_images", "probability", "category", "warnings",
)  # fmt: skip
EXAM_COLUMNS = (
    "patient_id", "study_uid", "lateralities", "images", "n_images", "probability", "category",
)  # fmt: skip

#: Separator inside one CSV cell that lists several values (image names, views, warnings).
LIST_SEPARATOR = ";"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return str(value)


def _csv_text(columns: Sequence[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row[c]) for c in columns])
    return buffer.getvalue()


def _image_row(f: ImageFindings) -> dict[str, Any]:
    return {
        "name": f.name,
        "source": f.source,
        "patient_id": f.patient_id,
        "study_uid": f.study_uid,
        "series_uid": f.series_uid,
        "sop_uid": f.sop_uid,
        "laterality": f.laterality,
        "view": f.view,
        "n_lesions": len(f.lesions),
        "n_malignant": sum(1 for les in f.lesions if les.label == "malignant"),
        "n_specks": sum(les.speck_count for les in f.lesions),
        "probability": float(f.risk.probability),
        "category": f.risk.category,
        "spacing_row_mm": float(f.spacing_mm[0]),
        "spacing_col_mm": float(f.spacing_mm[1]),
        "spacing_source": f.spacing_source,
        "model": f.model.name,
        "model_version": f.model.version,
        "score_threshold": float(f.score_threshold),
        "n_warnings": len(f.warnings),
        "warnings": LIST_SEPARATOR.join(f.warnings),
    }


def _breast_row(b: BreastFindings) -> dict[str, Any]:
    return {
        "patient_id": b.patient_id,
        "study_uid": b.study_uid,
        "laterality": b.laterality,
        "images": LIST_SEPARATOR.join(b.image_names),
        "views": LIST_SEPARATOR.join(v or "" for v in b.views),
        "n_images": len(b.image_names),
        "probability": float(b.risk.probability),
        "category": b.risk.category,
        "warnings": LIST_SEPARATOR.join(b.warnings),
    }


def _exam_row(e: ExamFindings) -> dict[str, Any]:
    names = [n for b in e.breasts for n in b.image_names]
    return {
        "patient_id": e.patient_id,
        "study_uid": e.study_uid,
        "lateralities": LIST_SEPARATOR.join(b.laterality or "?" for b in e.breasts),
        "images": LIST_SEPARATOR.join(names),
        "n_images": len(names),
        "probability": float(e.risk.probability),
        "category": e.risk.category,
    }


def write_batch_tables(
    images: list[ImageFindings], breasts: list[BreastFindings], exams: list[ExamFindings], out_dir: PathLike
) -> list[Path]:
    """Write ``images.csv``, ``breasts.csv`` and ``exams.csv`` (headers even when empty)."""
    tables = (
        ("images", IMAGE_COLUMNS, [_image_row(f) for f in images]),
        ("breasts", BREAST_COLUMNS, [_breast_row(b) for b in breasts]),
        ("exams", EXAM_COLUMNS, [_exam_row(e) for e in exams]),
    )
    return [
        atomic_write_text(_output_path(out_dir, name, ".csv"), _csv_text(cols, rows)) for name, cols, rows in tables
    ]
