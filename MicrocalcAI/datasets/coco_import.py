"""Generic COCO adapter: any COCO file validated, its categories mapped to benign/malignant,
paths made relative to the output file.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np

from MicrocalcAI.core.errors import DatasetError
from MicrocalcAI.core.progress import ProgressCallback
from MicrocalcAI.datasets.coco import LABEL_IDS
from MicrocalcAI.datasets.common import (
    CocoBuilder,
    ConversionReport,
    PathLike,
    check_source,
    image_size,
    or_no_progress,
)

__all__ = [
    "convert_coco",
]

log = logging.getLogger(__name__)

_IGNORE = ("ignore", "none", "skip", "")


def convert_coco(
    source: PathLike,
    out_json: PathLike,
    *,
    progress: Optional[ProgressCallback] = None,
    category_map: Optional[Mapping[str, Optional[str]]] = None,
    image_root: Optional[PathLike] = None,
    include_negatives: bool = True,
    strict: bool = False,
) -> ConversionReport:
    """Validate and normalise any COCO file into MicrocalcAI's COCO form.

    Categories named ``benign`` / ``malignant`` (any case) map to ids 1 / 2; other names need
    ``category_map`` ({source name: "benign" | "malignant" | None to ignore}); an unmapped
    category that has annotations is an error, because silently dropping it would turn those
    lesions into background. ``file_name`` is resolved against ``image_root`` (default: the
    COCO file's folder); image sizes are read from the files and a size that contradicts the
    COCO entry drops the image (its boxes would be in another pixel grid). Boxes come from
    ``bbox``, or from polygon ``segmentation`` when there is no bbox.
    """
    progress = or_no_progress(progress)
    src = check_source(source, want_dir=False)
    if src.is_dir():
        found = sorted(src.glob("*.json"))
        if len(found) != 1:
            raise DatasetError(f"{src} holds {len(found)} .json files; give the COCO file itself")
        src = found[0]
    out = Path(out_json)
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"COCO file {src} is not readable JSON: {exc}") from exc
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("categories"), list)
    ):
        raise DatasetError(f"COCO file {src}: needs 'images' and 'categories' lists")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise DatasetError(f"COCO file {src}: 'annotations' must be a list")
    base = Path(image_root) if image_root else src.parent

    mapping: dict[str, Optional[str]] = {"benign": "benign", "malignant": "malignant"}
    for name, target in (category_map or {}).items():
        t = None if target is None else str(target).strip().lower()
        if t is not None and t not in _IGNORE and t not in LABEL_IDS:
            raise DatasetError(f"category_map: {name!r} -> {target!r}; targets are benign, malignant or ignore")
        mapping[str(name).strip().lower()] = None if t in _IGNORE or t is None else t
    cat_label: dict[Any, Optional[str]] = {}
    unmapped: dict[Any, str] = {}
    for k, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise DatasetError(f"COCO file {src}: categories[{k}] needs 'id' and 'name'")
        name = str(cat["name"]).strip().lower()
        if name in mapping:
            cat_label[cat["id"]] = mapping[name]
        else:
            unmapped[cat["id"]] = str(cat["name"])
    used_unmapped = sorted(
        {
            unmapped[a.get("category_id")]
            for a in annotations
            if isinstance(a, dict) and a.get("category_id") in unmapped
        }
    )
    if used_unmapped:
        raise DatasetError(
            f"COCO file {src}: categories {used_unmapped} have annotations but no mapping; pass category_map "
            "(e.g. --category-map 'calc_m=malignant' 'mass=ignore')"
        )

    builder = CocoBuilder("coco", src, out, strict=strict, include_negatives=include_negatives)
    builder.label_source = "source COCO categories"
    ignored = 0
    keys: dict[Any, Optional[str]] = {}
    for k, entry in enumerate(data["images"]):
        progress(0.8 * k / max(len(data["images"]), 1), "checking images")
        where = f"{src.name} images[{k}]"
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            builder.skip(where, "image entry needs 'id' and 'file_name'")
            continue
        if entry["id"] in keys:
            raise DatasetError(f"{where}: duplicate image id {entry['id']!r}")
        keys[entry["id"]] = None
        path = Path(str(entry["file_name"]))
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            builder.skip(where, f"image file not found: {path}")
            continue
        try:
            width, height = image_size(path)
        except ValueError as exc:
            builder.skip(where, f"{path.name}: {exc}")
            continue
        given_w, given_h = entry.get("width"), entry.get("height")
        if (
            isinstance(given_w, (int, float))
            and isinstance(given_h, (int, float))
            and (int(given_w), int(given_h)) != (width, height)
        ):
            builder.skip(where, f"COCO says {given_w}x{given_h} but {path.name} is {width}x{height}")
            continue
        meta: dict[str, Any] = {}
        spacing = entry.get("spacing_mm")
        if isinstance(spacing, (list, tuple)) and spacing:
            spacing = spacing[0]
        if isinstance(spacing, (int, float)) and not isinstance(spacing, bool) and 0.01 <= spacing <= 1.0:
            meta["spacing_mm"] = float(spacing)
        elif spacing is not None:
            builder.skip(where, f"spacing_mm {entry.get('spacing_mm')!r} is not a plausible spacing; not recorded")
        lat = str(entry.get("laterality", "")).strip().upper()[:1]
        if lat in ("L", "R"):
            meta["laterality"] = lat
        if entry.get("view"):
            meta["view"] = str(entry["view"]).strip().upper()
        for extra_key, value in entry.items():
            if extra_key not in ("id", "file_name", "width", "height", "spacing_mm", "laterality", "view"):
                meta.setdefault(extra_key, value)
        keys[entry["id"]] = builder.image(f"{k}:{path.resolve()}", path, width, height, **meta)

    for k, ann in enumerate(annotations):
        where = f"{src.name} annotations[{k}]"
        if not isinstance(ann, dict):
            builder.skip(where, "annotation is not an object")
            continue
        key = keys.get(ann.get("image_id"), "missing")
        if key == "missing":
            builder.skip(where, f"unknown image_id {ann.get('image_id')!r}")
            continue
        if key is None:
            continue  # its image was already skipped and reported
        if ann.get("category_id") not in cat_label:
            builder.fail_lesion(key, where, f"unknown category_id {ann.get('category_id')!r}")
            continue
        label = cat_label[ann["category_id"]]
        if label is None:
            ignored += 1
            continue
        box = _coco_box(ann)
        if box is None:
            builder.fail_lesion(key, where, f"no usable bbox or polygon segmentation (bbox {ann.get('bbox')!r})")
            continue
        builder.add_lesion(key, box, label, where, source_annotation_id=ann.get("id"))
    if ignored:
        builder.report.notes.append(f"{ignored} annotation(s) of categories mapped to 'ignore' were dropped")
    progress(0.9, "writing COCO")
    report = builder.write([src])
    progress(1.0, "done")
    return report


def _coco_box(ann: Mapping[str, Any]) -> Optional[tuple[float, float, float, float]]:
    bbox = ann.get("bbox")
    if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            return None
        if all(math.isfinite(v) for v in (x, y, w, h)) and w > 0 and h > 0:
            return (x, y, x + w, y + h)
        return None
    seg = ann.get("segmentation")
    if isinstance(seg, list) and seg and all(isinstance(p, list) for p in seg):
        try:
            pts = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in seg if p])
        except ValueError:
            return None
        if len(pts) and np.all(np.isfinite(pts)):
            (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
            if x1 > x0 and y1 > y0:
                return (float(x0), float(y0), float(x1), float(y1))
    return None
