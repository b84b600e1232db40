"""Every output says when an image is unlike the model's training data (issue 11, part 3).

The OOD check is built by hand (:func:`_findings_helpers.ood_check`): the records are plain
dataclasses, so each output is tested without the stage that fills ``ImageFindings.ood``.
Each test also checks that a model without an OOD reference (``ood`` None) changes nothing
but the new, empty fields.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _findings_helpers import assert_findings_equal, image_findings, lesion, model_spec, ood_check

from MicrocalcAI.core.errors import UnreadableFileError
from MicrocalcAI.core.findings.risk import INDETERMINATE, breast_findings, exam_findings
from MicrocalcAI.core.outputs.findings_json import (
    SCHEMA_VERSION,
    findings_from_json,
    findings_to_json,
    load_image_json,
    write_image_json,
)
from MicrocalcAI.core.outputs.overlay import OOD_COLOUR, render_overlay
from MicrocalcAI.core.outputs.tables import write_batch_tables

REPO = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO / "Resources" / "Schemas" / "findings.schema.json"
SAMPLE = REPO / "Resources" / "Samples" / "sim_R_CC.dcm"


def _schema_errors(doc: dict) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]


def _flagged(name: str = "R_CC", **kwargs):
    lesions = [lesion(1, "malignant", 0.95), lesion(2, "benign", 0.2, (50.0, 60.0, 70.0, 90.0))]
    return image_findings(name, lesions=lesions, ood=ood_check(flagged=True), **kwargs)


# --------------------------------------------------------------------------- findings JSON


def test_json_carries_the_ood_block_and_reads_it_back(tmp_path):
    f = _flagged()
    assert f.risk.category == INDETERMINATE
    path = write_image_json(f, tmp_path)
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == SCHEMA_VERSION == "1.2"
    assert doc["ood"] == {
        "score": 7.5,
        "threshold": 5.0,
        "flagged": True,
        "reasons": f.ood.reasons,
        "measurements": f.ood.measurements,
    }
    assert doc["risk"]["category"] == "indeterminate" and doc["risk"]["probability"] > 0.5
    assert_findings_equal(f, load_image_json(path))


@pytest.mark.parametrize("ood", [None, ood_check(flagged=False), ood_check(flagged=True)])
def test_json_with_and_without_ood_validates_against_the_schema(ood):
    doc = findings_to_json(image_findings("x", lesions=[lesion(1, "benign", 0.3)], ood=ood))
    assert _schema_errors(doc) == []
    assert ("ood" in doc) and (doc["ood"] is None) == (ood is None)


def test_schema_rejects_a_broken_ood_block():
    doc = findings_to_json(_flagged())
    for breakage in ("no flag", "flag as text", "extra", "missing block"):
        broken = json.loads(json.dumps(doc))
        if breakage == "no flag":
            del broken["ood"]["flagged"]
        elif breakage == "flag as text":
            broken["ood"]["flagged"] = "yes"
        elif breakage == "extra":
            broken["ood"]["confidence"] = 0.3
        else:
            del broken["ood"]
        assert _schema_errors(broken), breakage
    broken = json.loads(json.dumps(doc))
    broken["ood"]["flagged"] = "yes"
    with pytest.raises(UnreadableFileError):
        findings_from_json(broken)


def test_a_version_1_0_file_is_still_read_without_an_ood_check():
    f = image_findings("old", lesions=[lesion(1, "malignant", 0.8)])
    doc = findings_to_json(f)
    del doc["ood"]
    doc["schema_version"] = "1.0"
    back = findings_from_json(doc)
    assert back.ood is None and back.risk == f.risk
    assert_findings_equal(f, back)
    doc["schema_version"] = "0.9"
    with pytest.raises(UnreadableFileError, match="schema_version"):
        findings_from_json(doc)


# --------------------------------------------------------------------------- CSV tables


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_tables_show_the_ood_check_and_what_breasts_and_exams_rest_on(tmp_path):
    spec = model_spec()
    images = [
        _flagged("L_CC", laterality="L", view="CC"),
        image_findings(
            "L_MLO", laterality="L", view="MLO", lesions=[lesion(1, "benign", 0.1)], ood=ood_check(flagged=False)
        ),  # fmt: skip
        image_findings("R_CC", laterality="R", view="CC"),  # a model without OOD reference
    ]
    breasts = breast_findings(images, spec.risk_categories)
    exams = exam_findings(breasts, spec.risk_categories)
    image_csv, breast_csv, exam_csv = write_batch_tables(images, breasts, exams, tmp_path)
    rows = _rows(image_csv)
    assert [(r["category"], r["ood_flagged"], r["ood_score"], r["ood_threshold"]) for r in rows] == [
        ("indeterminate", "true", "7.5", "5"),
        ("low", "false", "7.5", "5"),
        ("low", "", "", ""),
    ]
    assert rows[0]["ood_reasons"] == ";".join(images[0].ood.reasons) and rows[1]["ood_reasons"] == ""
    assert [(r["laterality"], r["category"], r["indeterminate_images"]) for r in _rows(breast_csv)] == [
        ("L", "indeterminate", "L_CC"),
        ("R", "low", ""),
    ]
    (exam,) = _rows(exam_csv)
    assert (exam["category"], exam["indeterminate_images"]) == ("indeterminate", "L_CC")


# --------------------------------------------------------------------------- overlay


def test_overlay_warns_on_a_flagged_image_and_only_there():
    stored01 = np.full((300, 240), 0.5, dtype=np.float32)
    magenta = np.array(OOD_COLOUR, dtype=np.uint8)

    def pixels(ood):
        f = image_findings("x", shape=(300, 240), lesions=[lesion(1, "malignant", 0.9)], ood=ood)
        return np.asarray(render_overlay(f, stored01, max_size=2048))

    flagged, passed, none = pixels(ood_check(True)), pixels(ood_check(False)), pixels(None)
    assert (flagged == magenta).all(axis=-1).sum() > 50  # the warning text is drawn
    assert not (passed == magenta).all(axis=-1).any() and not (none == magenta).all(axis=-1).any()
    assert np.array_equal(passed, none)  # a passed check looks exactly like no check


# --------------------------------------------------------------------------- DICOM


def _on_sample(f):
    header = pydicom.dcmread(SAMPLE, stop_before_pixels=True)
    f.image_shape = (int(header.Rows), int(header.Columns))
    f.sop_uid, f.study_uid = str(header.SOPInstanceUID), str(header.StudyInstanceUID)
    return f


def test_srs_code_the_indeterminate_category_and_carry_the_check(tmp_path):
    from MicrocalcAI.core.outputs.dicom import codes, write_dicom_outputs
    from MicrocalcAI.core.outputs.dicom.read_sr import read_sr

    f = _on_sample(_flagged(laterality="R", view="CC"))
    paths = write_dicom_outputs(f, SAMPLE, tmp_path)
    code = codes.risk_category_code(INDETERMINATE)
    assert (code.value, code.meaning) == ("risk-indeterm", "indeterminate") and len(code.value) <= 16
    tid1500 = pydicom.dcmread(paths[1])

    def coded_values(item):
        for child in getattr(item, "ContentSequence", []):
            yield from (str(c.CodeValue) for c in getattr(child, "ConceptCodeSequence", []))
            yield from coded_values(child)

    assert "risk-indeterm" in list(coded_values(tid1500))
    for kind in (0, 1):  # CAD SR, TID 1500
        back = read_sr(paths[kind], seg=paths[3])
        assert back.risk.category == INDETERMINATE
        assert back.risk.probability == pytest.approx(f.risk.probability, abs=1e-9)
        assert back.ood == f.ood
    for tool in ("dciodvfy", "dsrdump"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/install_system_tools.sh installs it)")
    for path in paths:
        proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        assert "Error" not in proc.stdout + proc.stderr, path.name
    for path in paths[:2]:
        proc = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True)
        assert not [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("E:")]


def test_srs_of_a_model_without_ood_reference_have_no_ood_lines(tmp_path):
    from MicrocalcAI.core.outputs.dicom import write_dicom_outputs
    from MicrocalcAI.core.outputs.dicom.parameters import algorithm_parameters
    from MicrocalcAI.core.outputs.dicom.read_sr import read_sr

    f = _on_sample(image_findings("plain", lesions=[lesion(1, "malignant", 0.9)], laterality="R"))
    assert not [t for t in algorithm_parameters(f) if t.startswith("ood")]
    paths = write_dicom_outputs(f, SAMPLE, tmp_path)
    assert read_sr(paths[1]).ood is None and read_sr(paths[1]).risk.category == f.risk.category


# --------------------------------------------------------------------------- report


def test_report_shows_a_warning_box_and_the_indeterminate_category(tmp_path):
    from MicrocalcAI.core.outputs.report import write_exam_reports

    spec = model_spec()
    cc = _on_sample(_flagged("R_CC", laterality="R", view="CC"))
    mlo = _on_sample(image_findings("R_MLO", laterality="R", view="MLO", lesions=[lesion(1, "benign", 0.1)]))
    for f in (cc, mlo):
        f.source = str(SAMPLE)
    result = write_exam_reports([cc, mlo], tmp_path, spec=spec, formats=("html",))
    assert result.ok
    html = result.written[0].read_text(encoding="utf-8")
    assert 'class="unlike"' in html and "Unlike the training data: risk indeterminate." in html
    assert "noise level 3.1x the training range" in html  # the reasons are shown
    assert "Exam risk 0.00 indeterminate".replace("0.00", f"{cc.risk.probability:.2f}") in html
    assert "#6a1b9a" in html  # the indeterminate colour, not low or high

    mlo_only = write_exam_reports([mlo], tmp_path / "plain", spec=spec, formats=("html",))
    plain = mlo_only.written[0].read_text(encoding="utf-8")
    assert 'class="unlike"' not in plain and "indeterminate" not in plain


# --------------------------------------------------------------------------- command line


def test_detect_summary_lists_the_images_unlike_the_training_data(capsys, tmp_path):
    from MicrocalcAI.cli.detect import _print_summary
    from MicrocalcAI.core.batch import BatchResult

    spec = model_spec()
    images = [_flagged("L_CC", laterality="L"), image_findings("L_MLO", laterality="L", view="MLO")]
    breasts = breast_findings(images, spec.risk_categories)
    result = BatchResult(images=images, analysed=["a", "b"], breasts=breasts,
                         exams=exam_findings(breasts, spec.risk_categories))  # fmt: skip
    _print_summary(result, tmp_path)
    text = capsys.readouterr().out
    assert "1 image(s) unlike the model's training data" in text
    assert "L_CC: OOD score 7.50 >= 5.00" in text and images[0].ood.reasons[0] in text
    assert text.count("indeterminate") >= 4  # image, breast and exam rows, and the note
    _print_summary(BatchResult(images=images[1:], analysed=["b"]), tmp_path)
    assert "unlike" not in capsys.readouterr().out
