"""Dataset adapters: each public format, written from its published description, converts into a
COCO file that ``parse_coco`` (what training reads) accepts, with exactly the expected boxes.

Expected boxes are worked out by hand in the fixture docstrings (Testing/adapter_helpers.py)
from the format's conventions: the ROI mask's bounding box for CBIS-DDSM, the outline or the
single-linkage speck groups for INbreast, the finding rectangle for VinDr-Mammo and the
bottom-left-origin circle for mini-MIAS.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from adapter_helpers import (
    COLS,
    ROWS,
    write_cbis_ddsm,
    write_coco_source,
    write_inbreast,
    write_mini_mias,
    write_vindr_mammo,
)

from MicrocalcAI.core.errors import DatasetError
from MicrocalcAI.datasets import (
    ConversionReport,
    convert_cbis_ddsm,
    convert_coco,
    convert_dataset,
    convert_inbreast,
    convert_mini_mias,
    convert_vindr_mammo,
    normalise_kind,
)
from MicrocalcAI.datasets.coco import LABEL_IDS, parse_coco
from MicrocalcAI.datasets.inbreast import group_points_single_linkage


def _load(out: Path) -> dict:
    return json.loads(out.read_text(encoding="utf-8"))


def _boxes_by_image(out: Path, key: str = "file_name") -> dict[str, list[tuple[list[float], str]]]:
    """{image name: [(x0, y0, x1, y1), label]} from the written COCO, via parse_coco (as training reads it)."""
    names = {v: k for k, v in LABEL_IDS.items()}
    result = {}
    for entry in parse_coco(out):
        result[entry.path.name if key == "file_name" else entry.extra[key]] = sorted(
            ([float(v) for v in box], names[int(label)]) for box, label in zip(entry.boxes_stored, entry.labels)
        )
    return result


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _reasons(report: ConversionReport) -> str:
    return "\n".join(str(s) for s in report.skipped)


# ------------------------------------------------------------------------------ CBIS-DDSM


def test_cbis_ddsm_boxes_are_mask_bounding_boxes(tmp_path):
    root = write_cbis_ddsm(tmp_path / "cbis")
    before = _tree_digest(root)
    out = tmp_path / "out" / "cbis.json"
    report = convert_cbis_ddsm(root, out)

    assert _tree_digest(root) == before  # the dataset is never modified
    data = _load(out)
    by_patient = {}
    for img in data["images"]:
        by_patient[img["patient_id"]] = img
        assert not Path(img["file_name"]).is_absolute()
        assert (out.parent / img["file_name"]).is_file()
    assert set(by_patient) == {"P_00005", "P_00007", "P_00010"}
    assert (by_patient["P_00005"]["laterality"], by_patient["P_00005"]["view"]) == ("R", "CC")
    assert (by_patient["P_00007"]["laterality"], by_patient["P_00007"]["view"]) == ("L", "MLO")
    assert by_patient["P_00005"]["width"] == COLS and by_patient["P_00005"]["height"] == ROWS

    boxes = _boxes_by_image(out, key="patient_id")
    # Two blobs of one abnormality -> one box around both; second abnormality on the same image.
    assert boxes["P_00005"] == [([30.0, 20.0, 60.0, 40.0], "benign"), ([100.0, 70.0, 110.0, 90.0], "malignant")]
    assert boxes["P_00007"] == [([0.0, 0.0, 5.0, 7.0], "benign")]
    # Classic UID layout with the mask/crop paths swapped in the CSV: the full-size mask wins.
    assert boxes["P_00010"] == [([64.0, 48.0, 65.0, 49.0], "malignant")]

    assert report.images == 3 and report.lesions == {"benign": 2, "malignant": 2}
    reasons = _reasons(report)
    assert (
        "calc_case_description_train_set.csv row 5 (line 8)" in reasons and "no ROI mask of the image's size" in reasons
    )
    assert "calc_case_description_train_set.csv row 6 (line 10)" in reasons and "full image not found" in reasons
    assert "calc_case_description_train_set.csv row 7 (line 12)" in reasons and "not calcification" in reasons
    assert "image left out" in reasons  # P_00008: its only lesion could not be converted
    assert any("spacing" in n for n in report.notes)


def test_cbis_ddsm_split_spacing_and_strict(tmp_path):
    root = write_cbis_ddsm(tmp_path / "cbis")
    out = tmp_path / "test.json"
    report = convert_cbis_ddsm(root, out, split="test", spacing_mm=0.05)
    images = _load(out)["images"]
    assert [i["patient_id"] for i in images] == ["P_00010"] and images[0]["spacing_mm"] == 0.05
    assert [p.name for p in report.inputs] == ["calc_case_description_test_set.csv"]
    assert parse_coco(out)[0].spacing_mm == 0.05

    with pytest.raises(DatasetError, match=r"calc_case_description_train_set\.csv row \d+ \(line \d+\)"):
        convert_cbis_ddsm(root, tmp_path / "strict.json", split="train", strict=True)
    assert not (tmp_path / "strict.json").exists()


def test_cbis_ddsm_missing_column_names_the_file(tmp_path):
    root = write_cbis_ddsm(tmp_path / "cbis")
    csv_path = root / "calc_case_description_test_set.csv"
    csv_path.write_text(csv_path.read_text().replace("ROI mask file path", "ROI path"))
    with pytest.raises(DatasetError, match=r"calc_case_description_test_set\.csv: missing column"):
        convert_cbis_ddsm(root, tmp_path / "x.json", split="test")


# ------------------------------------------------------------------------------ INbreast


def test_single_linkage_chains_and_gaps():
    pts = np.array([[0, 0], [4, 0], [8, 0], [30, 0], [33, 4], [100, 100]], dtype=float)
    assert group_points_single_linkage(pts, 5.0) == [[0, 1, 2], [3, 4], [5]]
    assert group_points_single_linkage(pts, 3.9) == [[0], [1], [2], [3], [4], [5]]
    assert group_points_single_linkage(np.zeros((0, 2)), 5.0) == []


def test_inbreast_clusters_groups_and_birads_proxy(tmp_path):
    release = write_inbreast(tmp_path / "inbreast")
    out = tmp_path / "inbreast.json"
    report = convert_inbreast(tmp_path / "inbreast", out, include_negatives=True)

    boxes = _boxes_by_image(out)
    name = {n.split("_")[0]: n for n in boxes}
    # Cluster outline wins over its specks; the Mass ROI is no calcification lesion.
    assert boxes[name["20586908"]] == [([10.0, 12.0, 40.0, 44.0], "malignant")]  # BI-RADS 4c
    # Speck groups chained within 5 mm (10 px at 0.5 mm), widened by 0.5 mm (1 px); the pair
    # and the lone speck are below 3 calcifications.
    assert boxes[name["20586934"]] == [
        ([19.0, 19.0, 25.0, 28.0], "benign"),  # BI-RADS 2
        ([79.0, 59.0, 100.0, 71.0], "benign"),
    ]
    assert boxes[name["20586960"]] == []  # no XML: a negative image
    assert set(name) == {"20586908", "20586934", "20586960"}

    entries = {e["file_name"].split("/")[-1].split("_")[0]: e for e in _load(out)["images"]}
    assert entries["20586908"]["spacing_mm"] == 0.5 and entries["20586960"]["spacing_mm"] == 0.07
    assert (entries["20586934"]["laterality"], entries["20586934"]["view"]) == ("L", "MLO")
    assert entries["20586908"]["birads"] == "4c"

    reasons = _reasons(report)
    assert "22614097" in reasons and "no row in INbreast.csv" in reasons
    assert "22614127.xml" in reasons and "unreadable INbreast XML" in reasons
    assert any("proxy" in n for n in report.notes)
    assert report.lesions == {"benign": 2, "malignant": 1} and report.images == 3
    assert release.is_dir()


def test_inbreast_without_negatives_and_custom_clustering(tmp_path):
    write_inbreast(tmp_path / "inbreast")
    out = tmp_path / "inbreast.json"
    # 2 mm linkage = 4 px: only the pair (60,85)-(64,85), exactly 4 px apart, still chains; with
    # min_calcifications=1 every other speck is its own lesion, at least the pixel it marks.
    report = convert_inbreast(tmp_path / "inbreast", out, cluster_link_mm=2.0, min_calcifications=1, calc_margin_mm=0)
    boxes = _boxes_by_image(out)
    speck_boxes = next(v for k, v in boxes.items() if k.startswith("20586934"))
    assert len(speck_boxes) == 11 - 1  # 11 calcification ROIs, the pair is one group
    assert ([59.5, 84.5, 64.5, 85.5], "benign") in speck_boxes
    assert ([119.5, 4.5, 120.5, 5.5], "benign") in speck_boxes
    assert ([94.5, 63.5, 99.5, 68.5], "benign") in speck_boxes  # a 3-point outline keeps its extent
    assert not any(k.startswith("20586960") for k in boxes)  # negatives left out by default
    assert report.images == 2


# ------------------------------------------------------------------------------ VinDr-Mammo


def test_vindr_mammo_suspicious_calcification_rows(tmp_path):
    root = write_vindr_mammo(tmp_path / "vindr")
    out = tmp_path / "vindr.json"
    report = convert_vindr_mammo(root, out)
    boxes = _boxes_by_image(out)
    assert boxes == {
        "img_a.dicom": [([10.5, 20.25, 50.0, 60.0], "malignant"), ([70.0, 10.0, 90.0, 30.0], "benign")],
        "img_b.dicom": [([0.0, 0.0, 128.0, 96.0], "malignant")],
    }
    entries = {Path(e["file_name"]).name: e for e in _load(out)["images"]}
    assert entries["img_a.dicom"]["file_name"] == "vindr/images/st1/img_a.dicom"
    assert (entries["img_b.dicom"]["laterality"], entries["img_b.dicom"]["view"]) == ("R", "MLO")
    reasons = _reasons(report)
    assert "finding_annotations.csv line 7" in reasons and "is not 2-5" in reasons  # img_d
    assert "img_e.dicom" in reasons and "not found" in reasons
    assert report.lesions == {"benign": 1, "malignant": 2}


def test_vindr_mammo_split_and_negatives(tmp_path):
    root = write_vindr_mammo(tmp_path / "vindr")
    out = tmp_path / "train.json"
    convert_vindr_mammo(root, out, split="train", include_negatives=True)
    boxes = _boxes_by_image(out)
    assert set(boxes) == {"img_a.dicom", "img_c.dicom"}  # img_b is test, img_d dropped, img_e missing
    assert boxes["img_c.dicom"] == []


# ------------------------------------------------------------------------------ mini-MIAS


def test_mini_mias_bottom_left_origin_and_clipping(tmp_path):
    root = write_mini_mias(tmp_path / "mias")
    before = _tree_digest(root)
    out = tmp_path / "mias.json"
    report = convert_mini_mias(root, out)
    assert _tree_digest(root) == before
    boxes = _boxes_by_image(out)
    assert boxes == {
        "mdb209.pgm": [([37.0, 36.0, 57.0, 56.0], "malignant")],  # y = 96 - 50 = 46, r = 10
        "mdb210.pgm": [([105.0, 0.0, 128.0, 21.0], "benign")],  # clipped at the right and top edges
        "mdb223.pgm": [([15.0, 61.0, 25.0, 71.0], "benign"), ([55.0, 61.0, 65.0, 71.0], "benign")],
    }
    entries = {Path(e["file_name"]).name: e for e in _load(out)["images"]}
    assert entries["mdb209.pgm"]["spacing_mm"] == 0.2 and entries["mdb209.pgm"]["view"] == "MLO"
    assert entries["mdb209.pgm"]["laterality"] == "R" and entries["mdb210.pgm"]["laterality"] == "L"
    reasons = _reasons(report)
    assert "Info.txt line 6" in reasons and "without centre" in reasons  # mdb219
    assert "Info.txt line 9" in reasons and "mdb250.pgm not found" in reasons
    assert "mdb219" in reasons and "image left out" in reasons


def test_mini_mias_negatives_are_normal_images_only(tmp_path):
    root = write_mini_mias(tmp_path / "mias")
    out = tmp_path / "mias.json"
    convert_mini_mias(root, out, include_negatives=True)
    boxes = _boxes_by_image(out)
    assert boxes["mdb002.pgm"] == [] and "mdb001.pgm" not in boxes  # mass image: not a safe negative


# ------------------------------------------------------------------------------ generic COCO


def test_coco_mapping_validation_and_relative_paths(tmp_path):
    src = write_coco_source(tmp_path / "user")
    out = tmp_path / "elsewhere" / "clean.json"
    report = convert_coco(src, out, category_map={"Calc-Malignant": "malignant", "mass": "ignore"})
    data = _load(out)
    assert data["categories"][:2] == [
        {"id": 1, "name": "benign", "supercategory": "calcification"},
        {"id": 2, "name": "malignant", "supercategory": "calcification"},
    ]
    entries = {Path(e["file_name"]).name: e for e in data["images"]}
    assert entries["a.png"]["file_name"] == "../user/imgs/a.png"
    assert (entries["a.png"]["laterality"], entries["a.png"]["view"], entries["a.png"]["spacing_mm"]) == (
        "L",
        "CC",
        0.1,
    )
    boxes = _boxes_by_image(out)
    assert boxes == {
        "a.png": [
            ([0.0, 0.0, 5.0, 5.0], "benign"),
            ([10.0, 20.0, 40.0, 60.0], "malignant"),
            ([60.0, 10.0, 80.0, 30.0], "benign"),
        ],
        "d.png": [],
    }
    reasons = _reasons(report)
    assert "images[1]" in reasons and "100x100" in reasons
    assert "images[2]" in reasons and "not found" in reasons
    assert "annotations[5]" in reasons and "c.png" in reasons
    assert any("ignore" in n for n in report.notes)


def test_coco_unmapped_category_is_an_error(tmp_path):
    src = write_coco_source(tmp_path / "user")
    with pytest.raises(DatasetError, match=r"Calc-Malignant.*mass|category_map"):
        convert_coco(src, tmp_path / "x.json")
    with pytest.raises(DatasetError, match="targets are benign, malignant or ignore"):
        convert_coco(src, tmp_path / "x.json", category_map={"mass": "cancer"})


def test_output_never_overwrites_an_input(tmp_path):
    src = write_coco_source(tmp_path / "user")
    original = src.read_bytes()
    with pytest.raises(DatasetError, match="dataset's own files"):
        convert_coco(src, src, category_map={"Calc-Malignant": "malignant", "mass": None})
    assert src.read_bytes() == original


# ------------------------------------------------------------------------------ dispatch


def test_convert_dataset_dispatch_options_and_progress(tmp_path):
    root = write_mini_mias(tmp_path / "mias")
    calls = []
    report = convert_dataset(
        "MIAS", root, tmp_path / "m.json", progress=lambda f, m: calls.append(f), include_negatives=None, strict=None
    )
    assert report.kind == "mini-mias" and report.images == 3
    assert calls and calls[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in calls) and calls == sorted(calls)
    assert [normalise_kind(k) for k in ("CBIS_DDSM", "vindr", "InBreast", "coco", "mini-mias")] == [
        "cbis-ddsm",
        "vindr-mammo",
        "inbreast",
        "coco",
        "mini-mias",
    ]
    with pytest.raises(DatasetError, match="unknown dataset kind"):
        convert_dataset("ddsm-original-ljpeg", root, tmp_path / "m.json")
    with pytest.raises(DatasetError, match=r"\['split'\] do not apply to mini-mias"):
        convert_dataset("mini-mias", root, tmp_path / "m.json", split="train")
    with pytest.raises(DatasetError, match="dataset not found"):
        convert_dataset("inbreast", tmp_path / "nowhere", tmp_path / "m.json")
    assert "3 image(s)" in report.summary() and report.to_dict()["lesions"] == {"benign": 3, "malignant": 1}


def test_convert_command_writes_coco_and_reports_skipped_rows(tmp_path, capsys):
    """The CLI path: `microcalcai convert mini-mias SOURCE --out FILE`, exit 1 when rows were skipped."""
    import json

    from adapter_helpers import write_mini_mias

    from MicrocalcAI.cli import main as cli_main

    source = write_mini_mias(tmp_path / "mias")
    out = tmp_path / "mias.json"
    code = cli_main(["convert", "mini-mias", str(source), "--out", str(out), "--quiet"])
    report = capsys.readouterr().out
    assert out.exists() and parse_coco(out)
    coco = json.loads(out.read_text())
    assert coco["annotations"] and all(im["spacing_mm"] in ([0.2, 0.2], 0.2) for im in coco["images"])
    # The fixture has a CALC row without a centre and a row whose PGM is missing: reported, exit 1.
    assert code == 1 and "skipped" in report.lower()
    bad = cli_main(["convert", "mini-mias", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.json"), "--quiet"])
    assert bad == 2 and not (tmp_path / "x.json").exists()
