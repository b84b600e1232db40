"""The one COCO reader and writer: the training format every dataset ends up in.

``microcalcai train``, ``microcalcai evaluate`` and every dataset adapter use one format: a COCO
JSON file whose boxes are ``[x, y, w, h]`` in *stored* pixels of the referenced image files,
categories ``benign`` / ``malignant`` (ids from :data:`LABEL_IDS`), image entries optionally
carrying ``spacing_mm``, ``laterality``, ``view`` and ``hard_negatives``. :func:`parse_coco`
reads and validates it, :func:`write_coco` writes it atomically and reads it back through
:func:`parse_coco`, so nothing is written that training would refuse.

No masks are encoded anywhere in this format (lesions are boxes; the speck masks of the
inference outputs have their own codec in :mod:`MicrocalcAI.core.outputs.findings_json`), so
there is no RLE codec here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from MicrocalcAI.core.atomic import atomic_write_text, staged_path
from MicrocalcAI.core.detect.manifest import CLASSES
from MicrocalcAI.core.errors import DatasetError

__all__ = [
    "BENIGN",
    "COCO_CATEGORIES",
    "LABEL_IDS",
    "LABEL_NAMES",
    "MALIGNANT",
    "CocoImage",
    "coco_bbox",
    "parse_coco",
    "relative_file_name",
    "write_coco",
]

#: Class label ids of the ground truth: the detector's class indices (0 is background), so a
#: COCO category id, a training target and a network output index are the same number.
LABEL_IDS: dict[str, int] = {name: i for i, name in enumerate(CLASSES) if name != "background"}
LABEL_NAMES: dict[int, str] = {v: k for k, v in LABEL_IDS.items()}
BENIGN, MALIGNANT = LABEL_IDS["benign"], LABEL_IDS["malignant"]
#: The ``categories`` list every written file carries.
COCO_CATEGORIES: tuple[dict[str, Any], ...] = tuple(
    {"id": i, "name": name, "supercategory": "calcification"} for name, i in LABEL_IDS.items()
)


# ---------------------------------------------------------------------------------- reading


@dataclass
class CocoImage:
    """One image entry of a COCO file, validated, with its boxes in stored pixels."""

    image_id: int
    path: Path
    width: Optional[int]
    height: Optional[int]
    spacing_mm: Optional[float]
    boxes_stored: np.ndarray  # (N, 4) float64 [x0, y0, x1, y1] stored pixels
    labels: np.ndarray  # (N,) int64, values in LABEL_IDS
    extra: dict[str, Any] = field(default_factory=dict)  # laterality, view, ... as given
    #: (M, 4) stored-pixel boxes of recorded hard negatives (simulator's ``hard_negatives``):
    #: look-alikes that are *not* lesions, used to aim background patches at them.
    hard_negatives_stored: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    hard_negative_types: list[str] = field(default_factory=list)  # parallel to the boxes
    #: Per lesion (parallel to ``labels``): the annotation's text descriptors other than the
    #: COCO fields, e.g. ``morphology`` and ``distribution`` (BI-RADS) from the simulator.
    descriptors: list[dict[str, str]] = field(default_factory=list)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_coco(coco_json: os.PathLike | str) -> list[CocoImage]:
    """Read and validate a COCO file; raise :class:`DatasetError` listing every problem found.

    Validation is strict because a silently skipped annotation trains the model to call a
    lesion background. All problems are collected so a user fixes the file in one pass.
    """
    path = Path(coco_json)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DatasetError(f"COCO file not found: {path}") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"COCO file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"COCO file {path}: top level must be an object with 'images', 'annotations', 'categories'")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"COCO file {path}: missing or non-list '{key}'")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise DatasetError(f"COCO file {path}: 'annotations' must be a list")

    problems: list[str] = []
    category_to_label: dict[int, int] = {}
    for cat in data["categories"]:
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            problems.append(f"category entry {cat!r} needs 'id' and 'name'")
            continue
        name = str(cat["name"]).strip().lower()
        if name not in LABEL_IDS:
            problems.append(f"unknown category {cat['name']!r} (id {cat['id']}); expected one of {sorted(LABEL_IDS)}")
            continue
        category_to_label[int(cat["id"])] = LABEL_IDS[name]

    images: dict[int, CocoImage] = {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            problems.append(f"image entry {entry!r} needs 'id' and 'file_name'")
            continue
        image_id = int(entry["id"])
        if image_id in images:
            problems.append(f"duplicate image id {image_id}")
            continue
        file_path = Path(str(entry["file_name"]))
        if not file_path.is_absolute():
            file_path = path.parent / file_path
        if not file_path.is_file():
            problems.append(f"image {image_id}: file not found: {file_path}")
        spacing = entry.get("spacing_mm")
        if spacing is not None:
            if isinstance(spacing, (list, tuple)) and spacing:
                spacing = spacing[0]
            if not _finite_number(spacing) or spacing <= 0:
                problems.append(
                    f"image {image_id}: spacing_mm must be a positive number, got {entry.get('spacing_mm')!r}"
                )
                spacing = None
        extra = {k: v for k, v in entry.items() if k not in ("id", "file_name", "width", "height", "spacing_mm")}
        hard_boxes, hard_types = _parse_hard_negatives(entry.get("hard_negatives", []), image_id, problems)
        images[image_id] = CocoImage(
            image_id=image_id,
            path=file_path,
            width=int(entry["width"]) if _finite_number(entry.get("width")) else None,
            height=int(entry["height"]) if _finite_number(entry.get("height")) else None,
            spacing_mm=float(spacing) if spacing is not None else None,
            boxes_stored=np.zeros((0, 4)),
            labels=np.zeros((0,), dtype=np.int64),
            extra=extra,
            hard_negatives_stored=hard_boxes,
            hard_negative_types=hard_types,
        )

    per_image: dict[int, tuple[list[list[float]], list[int]]] = {i: ([], []) for i in images}
    per_image_descriptors: dict[int, list[dict[str, str]]] = {i: [] for i in images}
    for ann in annotations:
        if not isinstance(ann, dict):
            problems.append(f"annotation {ann!r} is not an object")
            continue
        ann_id = ann.get("id", "?")
        ann_image = ann.get("image_id")
        if ann_image not in images:
            problems.append(f"annotation {ann_id}: unknown image_id {ann_image!r}")
            continue
        image_id = int(ann_image)
        cat = ann.get("category_id")
        if cat not in category_to_label:
            problems.append(f"annotation {ann_id} (image {image_id}): unknown category_id {cat!r}")
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_finite_number(v) for v in bbox):
            problems.append(
                f"annotation {ann_id} (image {image_id}): bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}"
            )
            continue
        x, y, w, h = (float(v) for v in bbox)
        img = images[image_id]
        if w <= 0 or h <= 0 or x < 0 or y < 0:
            problems.append(
                f"annotation {ann_id} (image {image_id}): bbox {bbox} has non-positive size or negative origin"
            )
            continue
        if (img.width is not None and x + w > img.width + 0.5) or (img.height is not None and y + h > img.height + 0.5):
            problems.append(
                f"annotation {ann_id} (image {image_id}): bbox {bbox} extends outside the {img.width}x{img.height} image"
            )
            continue
        per_image[image_id][0].append([x, y, x + w, y + h])
        per_image[image_id][1].append(category_to_label[cat])
        per_image_descriptors[image_id].append(
            {
                k: v
                for k, v in ann.items()
                if isinstance(v, str)
                and k not in ("id", "image_id", "category_id", "bbox", "segmentation", "area", "iscrowd")
            }
        )

    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DatasetError(f"COCO file {path} has {len(problems)} problem(s):\n  {shown}{more}")
    if not images:
        raise DatasetError(f"COCO file {path} lists no images")

    out = []
    for image_id, img in images.items():
        boxes, labels = per_image[image_id]
        img.boxes_stored = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        img.labels = np.asarray(labels, dtype=np.int64)
        img.descriptors = per_image_descriptors[image_id]
        out.append(img)
    return out


def _parse_hard_negatives(value: Any, image_id: int, problems: list[str]) -> tuple[np.ndarray, list[str]]:
    """Stored-pixel [x0, y0, x1, y1] boxes and types of an image entry's optional
    ``hard_negatives`` (objects with a ``type`` and a COCO ``bbox``, as
    :mod:`MicrocalcAI.simulation.simulate` writes). Training aims patches at them; evaluation counts
    marks on them per type."""
    if not isinstance(value, list):
        problems.append(f"image {image_id}: 'hard_negatives' must be a list, got {type(value).__name__}")
        return np.zeros((0, 4)), []
    boxes, types = [], []
    for item in value:
        bbox = item.get("bbox") if isinstance(item, dict) else None
        if (
            not isinstance(bbox, (list, tuple))
            or len(bbox) != 4
            or not all(_finite_number(v) for v in bbox)
            or bbox[2] <= 0
            or bbox[3] <= 0
        ):
            problems.append(f"image {image_id}: hard negative {item!r} needs a bbox [x, y, w, h] with positive size")
            continue
        if "type" not in item:
            problems.append(f"image {image_id}: hard negative {item!r} needs a 'type'")
            continue
        x, y, w, h = (float(v) for v in bbox)
        boxes.append([x, y, x + w, y + h])
        types.append(str(item["type"]))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), types


# ---------------------------------------------------------------------------------- writing


def _num(value: float) -> Union[int, float]:
    """JSON number: integers stay integers, other values rounded to 1/1000 pixel."""
    r = round(float(value), 3)
    return int(r) if r.is_integer() else r


def coco_bbox(box_xyxy: Sequence[float]) -> tuple[list[Union[int, float]], Union[int, float]]:
    """(COCO ``bbox`` [x, y, w, h], ``area``) of a stored-pixel ``[x0, y0, x1, y1]`` box."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    return [_num(x0), _num(y0), _num(x1 - x0), _num(y1 - y0)], _num((x1 - x0) * (y1 - y0))


def relative_file_name(path: Path, folder: Path) -> str:
    """``file_name`` of ``path`` relative to the COCO file's ``folder`` (absolute on another drive).

    Relative names let a dataset folder and its JSON be moved together.
    """
    try:
        return Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return path.resolve().as_posix()


def write_coco(
    out_json: os.PathLike | str,
    images: Sequence[dict[str, Any]],
    annotations: Sequence[dict[str, Any]],
    info: Optional[dict[str, Any]] = None,
) -> Path:
    """Write a COCO file with :data:`COCO_CATEGORIES`, atomically and only if it reads back.

    The file is staged beside ``out_json`` and read back through :func:`parse_coco`; a file
    that training would refuse raises :class:`DatasetError` listing the problems and leaves
    nothing behind (an existing ``out_json`` stays untouched).
    """
    out = Path(out_json)
    data = {
        "info": dict(info or {}),
        "licenses": [],
        "images": list(images),
        "annotations": list(annotations),
        "categories": [dict(c) for c in COCO_CATEGORIES],
    }
    with staged_path(out) as staged:  # becomes ``out`` only once it reads back
        atomic_write_text(staged, json.dumps(data, indent=1) + "\n")
        try:
            parse_coco(staged)
        except DatasetError as exc:
            raise DatasetError(str(exc).replace(str(staged), str(out))) from None
    return out
