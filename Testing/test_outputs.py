"""Per-image JSON and overlay, batch CSV tables, completeness, atomic writes (MicrocalcAI.core.outputs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from _findings_helpers import (
    assert_findings_equal,
    image_findings,
    lesion,
    model_spec,
    schema_errors,
    synthetic_mammogram_patch,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import MicrocalcAI
from MicrocalcAI.core import atomic
from MicrocalcAI.core.atomic import atomic_write_bytes, atomic_write_text
from MicrocalcAI.core.errors import MicrocalcAIError, OutputError, UnreadableFileError
from MicrocalcAI.core.findings.lesions import build_lesions
from MicrocalcAI.core.findings.risk import breast_findings, exam_findings
from MicrocalcAI.core.outputs.complete import outputs_complete
from MicrocalcAI.core.outputs.findings_json import (
    SCHEMA_VERSION,
    findings_to_json,
    load_image_json,
    mask_to_rle,
    rle_to_mask,
    write_image_json,
)
from MicrocalcAI.core.outputs.overlay import CLASS_COLOURS, SPECK_COLOUR, write_overlay
from MicrocalcAI.core.outputs.tables import write_batch_tables

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "Resources" / "Schemas" / "findings.schema.json"


def _rich_findings(name: str = "R_CC") -> MicrocalcAI.core.records.ImageFindings:
    spacing = (0.07, 0.065)
    f = image_findings(
        name,
        spacing=spacing,
        shape=(300, 240),
        lesions=[
            lesion(1, "malignant", 0.87, (120.25, 40.5, 170.75, 90.0), spacing=spacing),
            lesion(2, "benign", 0.12, (20.0, 200.0, 60.0, 260.0), spacing=spacing),
        ],
    )
    first = f.lesions[0]
    first.speck_mask[0, :] = True  # a mask that starts with a True run
    f.laterality = None  # None values must survive the round trip
    f.warnings.append("laterality unknown")
    return f


def _schema_check(doc: dict) -> list[str]:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    try:
        import jsonschema  # noqa: F401  (not installed on the build machines)
    except ImportError:
        return schema_errors(doc, schema)
    validator = jsonschema.Draft202012Validator(schema)
    return [e.message for e in validator.iter_errors(doc)]


# --------------------------------------------------------------------------- RLE


@settings(max_examples=60, deadline=None)
@given(h=st.integers(0, 9), w=st.integers(0, 9), data=st.data())
def test_rle_round_trip(h, w, data):
    bits = data.draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
    mask = np.array(bits, dtype=bool).reshape(h, w)
    rle = mask_to_rle(mask)
    assert sum(rle) == h * w
    assert all(r > 0 for r in rle[1:])  # only the first (False) run may be empty
    assert np.array_equal(rle_to_mask(rle, (h, w)), mask)


def test_rle_format_is_false_first_row_major():
    mask = np.array([[True, True, False], [False, False, True]])
    assert mask_to_rle(mask) == [0, 2, 3, 1]
    assert mask_to_rle(~mask) == [2, 3, 1]
    with pytest.raises(UnreadableFileError):
        rle_to_mask([2, 3], (2, 3))


# --------------------------------------------------------------------------- JSON


def test_json_round_trip_is_exact(tmp_path):
    f = _rich_findings()
    path = write_image_json(f, tmp_path)
    assert path == tmp_path / "R_CC.json"
    back = load_image_json(path)
    assert_findings_equal(f, back)
    assert back.lesions[0].speck_mask[0].all() and back.lesions[0].speck_count == f.lesions[0].speck_count


def test_json_header_fields(tmp_path):
    doc = json.loads(write_image_json(_rich_findings(), tmp_path).read_text())
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["tool"] == {"name": "MicrocalcAI", "version": MicrocalcAI.__version__}
    assert doc["created"].endswith("+00:00")
    assert doc["input"]["shape"] == [300, 240] and doc["input"]["spacing_mm"] == [0.07, 0.065]
    les = doc["lesions"][0]
    assert les["id"] == 1 and les["label"] == "malignant" and les["speck_count"] == len(les["specks"])
    assert les["speck_mask"]["origin"] == [40, 120] and les["speck_mask"]["shape"] == [50, 51]
    top = doc["lesions"][0]  # image probability: the highest score * p_malignant
    assert doc["risk"] == {"probability": pytest.approx(top["score"] * 0.87), "category": "high"}
    assert doc["ood"] is None  # the model ships no OOD reference


def test_json_validates_against_the_schema(tmp_path):
    spacing = (0.1, 0.1)
    img = synthetic_mammogram_patch((200, 200), spacing, [(5.0, 5.0, 0.4), (6.0, 5.5, 0.3)])
    lesions = build_lesions(np.array([[30.0, 30.0, 80.0, 80.0]]), ["malignant"], [0.9], [0.8], img, spacing)
    assert lesions[0].speck_count == 2
    for f in (_rich_findings(), image_findings("empty"), image_findings("real", lesions=lesions, shape=(200, 200))):
        doc = json.loads(write_image_json(f, tmp_path).read_text())
        assert _schema_check(doc) == []


def test_schema_check_catches_broken_documents():
    doc = findings_to_json(_rich_findings())
    broken = json.loads(json.dumps(doc))
    del broken["lesions"][0]["speck_mask"]
    broken["risk"]["probability"] = 1.5
    broken["input"]["shape"] = [300]
    broken["extra"] = 1
    errors = _schema_check(broken)
    assert len(errors) >= 4


def test_load_rejects_truncated_or_foreign_json(tmp_path):
    path = write_image_json(_rich_findings(), tmp_path)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(UnreadableFileError):
        load_image_json(path)
    doc = json.loads(text)
    doc["schema_version"] = "0.9"
    path.write_text(json.dumps(doc))
    with pytest.raises(UnreadableFileError, match="schema_version"):
        load_image_json(path)
    doc["schema_version"] = SCHEMA_VERSION
    del doc["input"]["spacing_mm"]
    path.write_text(json.dumps(doc))
    with pytest.raises(UnreadableFileError):
        load_image_json(path)
    with pytest.raises(UnreadableFileError):
        load_image_json(tmp_path / "missing.json")


def test_names_that_escape_the_output_folder_are_refused(tmp_path):
    f = _rich_findings("../evil")
    with pytest.raises(OutputError) as info:
        write_image_json(f, tmp_path / "out")
    assert isinstance(info.value, MicrocalcAIError)
    assert not (tmp_path / "evil.json").exists()


# --------------------------------------------------------------------------- overlay


def _colour_near(pixels: np.ndarray, x: float, y: float, colour, radius: int = 2) -> bool:
    x, y = int(round(x)), int(round(y))
    patch = pixels[max(y - radius, 0) : y + radius + 1, max(x - radius, 0) : x + radius + 1]
    return bool((patch == np.array(colour, dtype=np.uint8)).all(axis=-1).any())


def test_overlay_size_and_class_colours_at_boxes(tmp_path):
    rows, cols = 3000, 1500
    f = image_findings("big", shape=(rows, cols))
    mal = lesion(1, "malignant", 0.9, (400.0, 1200.0, 700.0, 1500.0))
    ben = lesion(2, "benign", 0.2, (900.0, 2400.0, 1300.0, 2800.0))
    f.lesions = [mal, ben]
    stored01 = np.full((rows, cols), 0.5, dtype=np.float32)
    path = write_overlay(f, stored01, tmp_path, max_size=1000)
    assert path == tmp_path / "big_overlay.png"
    with Image.open(path) as im:
        assert im.size == (500, 1000) and im.mode == "RGB"
        px = np.asarray(im)
    s = 1000 / rows
    # Red on the malignant box's left and bottom edges, yellow on the benign box, not swapped.
    red, yellow = (255, 0, 0), (255, 255, 0)
    assert CLASS_COLOURS == {"malignant": red, "benign": yellow}
    assert _colour_near(px, 400 * s, 1350 * s, red)
    assert _colour_near(px, 550 * s, 1500 * s, red)
    assert _colour_near(px, 900 * s, 2600 * s, yellow)
    assert not _colour_near(px, 900 * s, 2600 * s, red)
    # Speck outlines (cyan) around the specks of the mask, here the 2x3 speck at rows 2-3, cols 3-5.
    assert _colour_near(px, (400 + 4.5) * s, (1200 + 3) * s, SPECK_COLOUR, radius=3)
    assert not (px == np.array(SPECK_COLOUR, dtype=np.uint8)).all(axis=-1)[int(1600 * s) :, : int(800 * s)].any()
    # Grey background elsewhere.
    assert tuple(px[700, 250]) == (128, 128, 128)


def test_small_overlay_is_not_upscaled_and_shape_must_match(tmp_path):
    f = _rich_findings()
    stored01 = np.random.default_rng(0).random((300, 240), dtype=np.float32)
    with Image.open(write_overlay(f, stored01, tmp_path)) as im:
        assert im.size == (240, 300)
    with pytest.raises(OutputError):
        write_overlay(f, stored01[:100], tmp_path)


# --------------------------------------------------------------------------- atomic writes, re-runs


def test_atomic_write_leaves_no_temp_files_and_normal_permissions(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]
    assert (tmp_path / "a.txt").read_text() == "two"
    # Same permissions as a file made by a plain open(), not mkstemp's private 0600.
    (tmp_path / "ref").write_text("")
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == (tmp_path / "ref").stat().st_mode & 0o777


def test_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "R_CC.json"
    write_image_json(_rich_findings(), tmp_path)
    before = target.read_bytes()

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", fail)
    f = _rich_findings()
    f.risk.probability = 0.01
    with pytest.raises(OutputError):
        write_image_json(f, tmp_path)
    with pytest.raises(OutputError):
        atomic_write_text(tmp_path / "new.txt", "x" * 100000)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R_CC.json"]


def test_interrupt_between_write_and_rename_leaves_no_partial_file(tmp_path, monkeypatch):
    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(tmp_path / "x.csv", "a,b\n")
    assert list(tmp_path.iterdir()) == []


def test_outputs_complete(tmp_path):
    f = _rich_findings()
    stored01 = np.zeros((300, 240), dtype=np.float32)
    assert not outputs_complete("R_CC", tmp_path)
    write_image_json(f, tmp_path)
    assert not outputs_complete("R_CC", tmp_path)  # overlay missing
    overlay = write_overlay(f, stored01, tmp_path)
    assert outputs_complete("R_CC", tmp_path)
    png = overlay.read_bytes()
    overlay.write_bytes(png[: len(png) // 2])
    assert not outputs_complete("R_CC", tmp_path)  # truncated overlay
    overlay.write_bytes(png)
    json_file = tmp_path / "R_CC.json"
    text = json_file.read_text()
    json_file.write_text(text[:-40])
    assert not outputs_complete("R_CC", tmp_path)  # truncated JSON
    json_file.write_text(text.replace(f'"schema_version": "{SCHEMA_VERSION}"', '"schema_version": "0.1"'))
    assert not outputs_complete("R_CC", tmp_path)  # older schema
    json_file.write_text(text)
    assert outputs_complete("R_CC", tmp_path)


# --------------------------------------------------------------------------- CSV tables


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_batch_tables(tmp_path):
    spec = model_spec()
    images = [
        image_findings(
            "L_CC", laterality="L", view="CC", lesions=[lesion(1, "malignant", 0.8), lesion(2, "benign", 0.3)]
        ),
        image_findings("L_MLO", laterality="L", view="MLO", lesions=[lesion(1, "benign", 0.4)]),
        image_findings("R_CC", laterality="R", view="CC", spacing=(0.05, 0.07)),
    ]
    breasts = breast_findings(images, spec.risk_categories)
    exams = exam_findings(breasts, spec.risk_categories)
    paths = write_batch_tables(images, breasts, exams, tmp_path / "batch")
    assert [p.name for p in paths] == ["images.csv", "breasts.csv", "exams.csv"]
    rows = _read_csv(paths[0])
    assert [r["name"] for r in rows] == ["L_CC", "L_MLO", "R_CC"]
    assert [(r["n_lesions"], r["n_malignant"]) for r in rows] == [("2", "1"), ("1", "0"), ("0", "0")]
    expected = [max((les.score * les.p_malignant for les in f.lesions), default=0.0) for f in images]
    assert [float(r["probability"]) for r in rows] == pytest.approx(expected, abs=1e-6)
    assert [r["category"] for r in rows] == ["high", "intermediate", "low"]
    assert (rows[2]["spacing_row_mm"], rows[2]["spacing_col_mm"], rows[2]["n_warnings"]) == ("0.05", "0.07", "1")
    assert rows[0]["n_specks"] == str(sum(les.speck_count for les in images[0].lesions))
    brows = _read_csv(paths[1])
    assert [(r["laterality"], r["images"], r["views"], float(r["probability"])) for r in brows] == [
        ("L", "L_CC;L_MLO", "CC;MLO", pytest.approx(expected[0], abs=1e-6)),
        ("R", "R_CC", "CC", 0.0),
    ]
    erows = _read_csv(paths[2])
    assert len(erows) == 1 and erows[0]["patient_id"] == "P1"
    assert float(erows[0]["probability"]) == pytest.approx(expected[0], abs=1e-6)
    assert erows[0]["n_images"] == "3"


def test_empty_batch_tables_have_headers(tmp_path):
    paths = write_batch_tables([], [], [], tmp_path)
    for path in paths:
        lines = path.read_text().splitlines()
        assert len(lines) == 1 and lines[0].count(",") >= 5


def test_staged_path_becomes_the_target_only_when_the_block_completes(tmp_path):
    from MicrocalcAI.core.atomic import staged_path

    target = tmp_path / "w.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with staged_path(target) as staged:
            staged.write_bytes(b"new")
            assert staged.parent == tmp_path and staged.name.startswith(".")
            raise RuntimeError("measurement failed")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    with staged_path(target) as staged:
        staged.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # still the old file while the block runs
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
