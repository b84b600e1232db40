"""The one COCO reader/writer (MicrocalcAI.datasets.coco): validation errors, label ids, round trip."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

from MicrocalcAI.core.detect.manifest import CLASSES
from MicrocalcAI.core.errors import DatasetError, MicrocalcAIError
from MicrocalcAI.datasets.coco import COCO_CATEGORIES, LABEL_IDS, coco_bbox, parse_coco, write_coco


def write_raw_coco(
    path: Path,
    images: Sequence[dict[str, Any]],
    annotations: Sequence[dict[str, Any]],
    categories: Optional[Sequence[dict[str, Any]]] = None,
) -> Path:
    """Write a COCO file by hand, to provoke each validation error on purpose."""
    data = {
        "images": list(images),
        "annotations": list(annotations),
        "categories": list(categories)
        if categories is not None
        else [{"id": 1, "name": "benign"}, {"id": 2, "name": "malignant"}],
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _image_file(tmp_path: Path) -> Path:
    path = tmp_path / "img.dcm"
    path.write_bytes(b"placeholder: parse_coco only checks that the file exists")
    return path


def test_missing_image_is_reported_with_its_path(tmp_path):
    coco = write_raw_coco(tmp_path / "a.json", [{"id": 1, "file_name": "nowhere/missing.dcm"}], [])
    with pytest.raises(DatasetError) as err:
        parse_coco(coco)
    assert "missing.dcm" in str(err.value) and str(coco) in str(err.value)
    assert isinstance(err.value, MicrocalcAIError)


@pytest.mark.parametrize(
    "bbox, fragment",
    [
        ([10, 10, -5, 20], "non-positive size"),
        ([10, 10, 0, 20], "non-positive size"),
        ([1, 2, 3], "4 finite numbers"),
        ([1, 2, "x", 4], "4 finite numbers"),
        ([90, 10, 20, 20], "outside"),
        ([-3, 10, 5, 5], "negative origin"),
    ],
)
def test_bad_bbox_is_rejected(tmp_path, bbox, fragment):
    img = _image_file(tmp_path)
    coco = write_raw_coco(
        tmp_path / "a.json",
        [{"id": 7, "file_name": img.name, "width": 100, "height": 100}],
        [{"id": 3, "image_id": 7, "category_id": 1, "bbox": bbox}],
    )
    with pytest.raises(DatasetError) as err:
        parse_coco(coco)
    assert fragment in str(err.value) and "annotation 3" in str(err.value)


def test_unknown_category_name_and_id_are_rejected(tmp_path):
    img = _image_file(tmp_path)
    images = [{"id": 1, "file_name": img.name}]
    coco = write_raw_coco(
        tmp_path / "a.json", images, [], categories=[{"id": 1, "name": "benign"}, {"id": 2, "name": "tumour"}]
    )
    with pytest.raises(DatasetError, match="unknown category 'tumour'"):
        parse_coco(coco)
    coco = write_raw_coco(
        tmp_path / "b.json", images, [{"id": 5, "image_id": 1, "category_id": 9, "bbox": [1, 1, 4, 4]}]
    )
    with pytest.raises(DatasetError, match="unknown category_id 9"):
        parse_coco(coco)


def test_all_problems_are_listed_at_once(tmp_path):
    img = _image_file(tmp_path)
    coco = write_raw_coco(
        tmp_path / "a.json",
        [{"id": 1, "file_name": img.name}, {"id": 2, "file_name": "gone.dcm"}],
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 0]},
            {"id": 2, "image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5]},
        ],
    )
    with pytest.raises(DatasetError) as err:
        parse_coco(coco)
    text = str(err.value)
    assert "3 problem(s)" in text and "gone.dcm" in text and "unknown image_id 99" in text


def test_not_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DatasetError, match="not valid JSON"):
        parse_coco(bad)
    with pytest.raises(DatasetError, match="not found"):
        parse_coco(tmp_path / "absent.json")


def test_valid_coco_is_parsed_into_xyxy_boxes_with_category_names_mapped(tmp_path):
    img = _image_file(tmp_path)
    coco = write_raw_coco(
        tmp_path / "a.json",
        [{"id": 4, "file_name": img.name, "width": 50, "height": 40, "spacing_mm": 0.07, "view": "CC"}],
        [{"id": 1, "image_id": 4, "category_id": 20, "bbox": [5, 6, 10, 4]}],
        categories=[{"id": 10, "name": "Benign"}, {"id": 20, "name": "malignant"}],
    )
    (entry,) = parse_coco(coco)
    assert entry.path == img and entry.spacing_mm == 0.07 and entry.extra["view"] == "CC"
    np.testing.assert_allclose(entry.boxes_stored, [[5, 6, 15, 10]])
    assert entry.labels.tolist() == [2]


def test_hard_negatives_are_parsed_and_malformed_ones_reported(tmp_path):
    img = _image_file(tmp_path)
    good = [{"type": "skin_marker", "bbox": [5, 6, 4, 3]}, {"type": "noise_spike", "bbox": [20, 1, 1, 1]}]
    coco = write_raw_coco(tmp_path / "a.json", [{"id": 1, "file_name": img.name, "hard_negatives": good}], [])
    (entry,) = parse_coco(coco)
    np.testing.assert_allclose(entry.hard_negatives_stored, [[5, 6, 9, 9], [20, 1, 21, 2]])
    assert entry.extra["hard_negatives"] == good  # still there for `microcalcai evaluate`
    bad = write_raw_coco(
        tmp_path / "b.json",
        [
            {"id": 1, "file_name": img.name, "hard_negatives": [{"type": "x", "bbox": [1, 2, 0, 3]}]},
            {"id": 2, "file_name": img.name, "hard_negatives": "none"},
        ],
        [],
    )
    with pytest.raises(DatasetError) as info:
        parse_coco(bad)
    assert "image 1: hard negative" in str(info.value) and "image 2: 'hard_negatives' must be a list" in str(info.value)


def test_label_ids_are_the_detector_class_indices():
    assert (
        LABEL_IDS
        == {"benign": CLASSES.index("benign"), "malignant": CLASSES.index("malignant")}
        == {
            "benign": 1,
            "malignant": 2,
        }
    )
    assert [(c["id"], c["name"]) for c in COCO_CATEGORIES] == [(1, "benign"), (2, "malignant")]


def test_written_file_reads_back_with_the_same_boxes(tmp_path):
    img = _image_file(tmp_path)
    bbox, area = coco_bbox([5.0, 6.0, 15.5, 10.0])
    assert (bbox, area) == ([5, 6, 10.5, 4], 42)
    out = write_coco(
        tmp_path / "sub" / "out.json",
        [{"id": 1, "file_name": "../img.dcm", "width": 50, "height": 40, "laterality": "L"}],
        [{"id": 1, "image_id": 1, "category_id": LABEL_IDS["malignant"], "bbox": bbox, "area": area, "iscrowd": 0}],
        {"description": "test"},
    )
    (entry,) = parse_coco(out)
    assert entry.path.resolve() == img.resolve() and entry.extra["laterality"] == "L"
    np.testing.assert_allclose(entry.boxes_stored, [[5, 6, 15.5, 10]])
    assert entry.labels.tolist() == [2]
    assert json.loads(out.read_text())["categories"][0]["name"] == "benign"
    with pytest.raises(DatasetError, match="bbox") as err:  # what training would refuse is never written
        write_coco(
            tmp_path / "bad.json", [{"id": 1, "file_name": "img.dcm"}], [{"id": 1, "image_id": 1, "category_id": 1}]
        )
    assert str(tmp_path / "bad.json") in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.dcm", "sub"]
