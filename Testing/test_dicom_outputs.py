"""DICOM result objects (CAD SR, TID 1500 SR, GSPS, SEG), their validation and reading back.

One module-scoped batch with the real default model analyses the bundled simulated sample
(3 known clusters), the four views of a real CBIS-DDSM case and a PNG, with ``dicom=True``;
the tests inspect what it wrote. The validators (dciodvfy, dsrdump) are the real Debian
tools; tests that need them skip, naming the tool, only where it is not installed
(``scripts/install_system_tools.sh`` installs them).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from MicrocalcAI.core.errors import InputError
from MicrocalcAI.core.outputs.dicom import codes, dicom_output_paths, dicom_outputs_complete, write_dicom_outputs
from MicrocalcAI.core.outputs.dicom.read_sr import MERGED_SPECKS_WARNING, NO_SPECK_SIZES_WARNING, read_sr
from MicrocalcAI.core.outputs.dicom.scoords import box_polyline
from MicrocalcAI.core.outputs.dicom.seg import SEG_CLASSES, class_masks
from MicrocalcAI.core.outputs.findings_json import load_image_json

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "Resources" / "Samples" / "sim_R_CC.dcm"
KINDS = ("cad_sr", "tid1500", "gsps", "seg")


def CBIS_VIEWS(cases):  # noqa: N802 - reads as the constant it is
    """The real films of the quick tests: a benign case's left CC (2 lesions) and a malignant
    case's left CC (3 lesions, two with a single speck); the slow test covers the other six."""
    return [cases[0]["lcc"], cases[1]["lcc"]]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run(tmp_path_factory, cbis_cases):
    """(BatchResult, out folder, analyzer, {input path: sha256 before}) of one --dicom batch."""
    from MicrocalcAI.core.batch import run_batch
    from MicrocalcAI.core.pipeline import Analyzer

    work = tmp_path_factory.mktemp("dicom")
    png = work / "in" / "plain.png"
    png.parent.mkdir()
    pixels = pydicom.dcmread(SAMPLE).pixel_array[::2, ::2]
    Image.fromarray((pixels >> 4).astype(np.uint8)).save(png)
    inputs = [SAMPLE, *CBIS_VIEWS(cbis_cases), png]
    before = {p: _sha256(p) for p in inputs}
    analyzer = Analyzer(device="cpu")
    result = run_batch(inputs, work / "out", analyzer=analyzer, dicom=True)
    return result, work / "out", analyzer, before


@pytest.fixture(scope="module")
def analysed(run):
    """{name: findings} of the DICOM inputs."""
    result, _, _, _ = run
    return {f.name: f for f in result.images if f.sop_uid is not None}


def test_each_dicom_input_gets_the_four_objects_and_the_png_one_skip_line(run, analysed):
    result, out, _, before = run
    assert not result.failed
    assert len(analysed) == 3 and "sim_R_CC" in analysed
    for name in analysed:
        assert [p.name for p in result.dicom[name]] == [p.name for p in dicom_output_paths(name, out).values()]
        assert all(p.is_file() for p in result.dicom[name])
    assert [Path(p).name for p in result.dicom_skipped] == ["plain.png"]
    assert not list(out.glob("plain*.dcm"))
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files
    assert all(_sha256(p) == digest for p, digest in before.items())  # inputs untouched
    assert len(analysed["sim_R_CC"].lesions) >= 3  # the sample's three known clusters (at least)


def test_a_non_dicom_input_gets_one_clear_line():
    from _findings_helpers import image_findings

    from MicrocalcAI.core.batch import BatchResult, _write_dicom

    f = image_findings("photo")
    f.sop_uid, f.source = None, "/data/photo.png"
    result = BatchResult()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("MicrocalcAI.core.batch")
    logger.addHandler(handler)  # directly: the CLI tests may have stopped propagation to the root
    try:
        assert _write_dicom(f, Path("/nonexistent"), False, result)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["/data/photo.png: not a DICOM input, DICOM output skipped"]
    assert result.dicom_skipped == ["/data/photo.png"] and not result.failed


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (run scripts/install_system_tools.sh as root)")
    return path


def _all_objects(run, analysed):
    _, out, _, _ = run
    return [path for name in analysed for path in dicom_output_paths(name, out).values()]


def test_every_object_passes_dciodvfy(run, analysed):
    dciodvfy = _tool("dciodvfy")
    for path in _all_objects(run, analysed):
        proc = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "Error" in line]
        assert errors == [], f"{path.name}: {errors}"


def test_every_sr_passes_dsrdump(run, analysed):
    dsrdump = _tool("dsrdump")
    srs = [p for p in _all_objects(run, analysed) if p.name.endswith(".sr.dcm")]
    assert len(srs) == 2 * len(analysed)
    for path in srs:
        proc = subprocess.run([dsrdump, str(path)], capture_output=True, text=True)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("E:")]
        assert proc.returncode == 0 and errors == [], f"{path.name}: {errors}"


# --------------------------------------------------------------------------- template content


def _concept(item, keyword="ConceptNameCodeSequence"):
    seq = item.get(keyword)
    return (seq[0].CodeValue, seq[0].CodingSchemeDesignator) if seq else None


def _key(code):
    return (code.value, code.scheme_designator)


def _kids(item, name=None):
    return [c for c in item.get("ContentSequence", []) if name is None or _concept(c) == _key(name)]


def _by_position(ds, position):
    """The content item a ReferencedContentItemIdentifier points at (1 = the root)."""
    assert position[0] == 1
    item = ds
    for index in position[1:]:
        item = item.ContentSequence[index - 1]
    return item


def _all_meanings(ds):
    for elem in ds.iterall():
        if elem.keyword == "CodeMeaning":
            yield str(elem.value)


def test_cad_sr_follows_tid_4000(run, analysed):
    _, out, _, _ = run
    f = analysed["sim_R_CC"]
    ds = pydicom.dcmread(dicom_output_paths("sim_R_CC", out)["cad_sr"])
    source = pydicom.dcmread(SAMPLE, stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.50"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "4000"
    assert _concept(ds) == ("111036", "DCM")
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
    assert ds.SOPInstanceUID != source.SOPInstanceUID and ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert all("\u200b" not in m for m in _all_meanings(ds))
    # Image Library: the analysed image, with laterality, view and pixel spacing.
    (library,) = _kids(ds, codes.IMAGE_LIBRARY)
    (image,) = _kids(library)
    assert image.ValueType == "IMAGE" and image.RelationshipType == "CONTAINS"
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert image.ReferencedSOPSequence[0].ReferencedSOPClassUID == source.SOPClassUID
    context = {(_concept(c)): c for c in _kids(image)}
    assert all(c.RelationshipType == "HAS ACQ CONTEXT" for c in context.values())
    assert _concept(context[_key(codes.IMAGE_LATERALITY)], "ConceptCodeSequence") == ("24028007", "SCT")
    assert _concept(context[_key(codes.IMAGE_VIEW)], "ConceptCodeSequence") == ("399162004", "SCT")
    spacing = float(context[_key(codes.HORIZONTAL_PIXEL_SPACING)].MeasuredValueSequence[0].NumericValue)
    assert spacing == pytest.approx(f.spacing_mm[1])
    # Summary with one Individual Impression/Recommendation per lesion.
    (summary,) = _kids(ds, codes.CAD_PROCESSING_AND_FINDINGS_SUMMARY)
    assert _concept(summary, "ConceptCodeSequence") == ("111242", "DCM")
    impressions = _kids(summary, codes.INDIVIDUAL_IMPRESSION_RECOMMENDATION)
    assert len(impressions) == len(f.lesions) and all(i.RelationshipType == "INFERRED FROM" for i in impressions)
    for impression, lesion in zip(impressions, f.lesions):
        (finding,) = _kids(impression, codes.SINGLE_IMAGE_FINDING)
        assert finding.RelationshipType == "CONTAINS"
        assert _concept(finding, "ConceptCodeSequence") == ("129769006", "SCT")
        items = {_concept(c): c for c in _kids(finding) if _concept(c) != _key(codes.SINGLE_IMAGE_FINDING)}
        assert items[_key(codes.RENDERING_INTENT)].RelationshipType == "HAS CONCEPT MOD"
        assert items[_key(codes.ALGORITHM_NAME)].TextValue == f.model.name
        assert items[_key(codes.ALGORITHM_VERSION)].TextValue == f.model.version
        pathology = items[_key(codes.PATHOLOGY)]
        assert _concept(pathology, "ConceptCodeSequence") == _key(codes.CLASS_CODES[lesion.label])
        p = float(items[_key(codes.PROBABILITY_OF_CANCER)].MeasuredValueSequence[0].NumericValue)
        assert p == pytest.approx(100 * lesion.p_malignant, abs=1e-6)
        n = float(items[_key(codes.NUMBER_OF_CALCIFICATIONS)].MeasuredValueSequence[0].NumericValue)
        assert n == lesion.speck_count
        outline, centre = items[_key(codes.OUTLINE)], items[_key(codes.CENTER)]
        assert outline.RelationshipType == centre.RelationshipType == "HAS PROPERTIES"
        assert outline.GraphicType == "POLYLINE" and centre.GraphicType == "POINT"
        xy = np.asarray(outline.GraphicData).reshape(-1, 2)
        assert xy.shape == (5, 2) and (xy[0] == xy[-1]).all()
        np.testing.assert_allclose(xy, box_polyline(lesion.box_px), atol=1e-3)
        x0, y0, x1, y1 = lesion.box_px
        np.testing.assert_allclose(centre.GraphicData, [(x0 + x1) / 2, (y0 + y1) / 2], atol=1e-3)
        for scoord in (outline, centre):  # SELECTED FROM the Image Library entry, by reference
            (ref,) = scoord.ContentSequence
            assert ref.RelationshipType == "SELECTED FROM"
            assert _by_position(ds, list(ref.ReferencedContentItemIdentifier)) is image
        specks = [c for c in _kids(finding, codes.SINGLE_IMAGE_FINDING)]
        assert len(specks) == lesion.speck_count
        assert all(c.RelationshipType == "INFERRED FROM" for c in specks)
        assert all(_concept(c, "ConceptCodeSequence") == ("129770007", "SCT") for c in specks)
        centres = [_kids(c, codes.CENTER)[0].GraphicData for c in specks]
        np.testing.assert_allclose(centres, [s.centroid_px for s in lesion.specks], atol=1e-3)


def test_tid1500_report_has_one_planar_roi_group_per_lesion(run, analysed):
    import highdicom as hd

    _, out, _, _ = run
    f = analysed["sim_R_CC"]
    path = dicom_output_paths("sim_R_CC", out)["tid1500"]
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert all("\u200b" not in m for m in _all_meanings(ds))
    # Read it the way research code and viewers do: through highdicom's TID 1500 parser.
    sr = hd.sr.srread(path)
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(f.lesions)
    for group, lesion in zip(groups, f.lesions):
        assert group.tracking_identifier == f"L{lesion.id}"
        assert group.finding_type == codes.CALCIFICATION_CLUSTER
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_allclose(region.value, box_polyline(lesion.box_px), atol=1e-3)
        (evaluation,) = group.get_qualitative_evaluations(name=codes.PATHOLOGY)
        assert evaluation.value == codes.CLASS_CODES[lesion.label]
        (p,) = group.get_measurements(name=codes.PROBABILITY_OF_CANCER)
        assert p.value == pytest.approx(lesion.p_malignant, abs=1e-9)
        (n,) = group.get_measurements(name=codes.NUMBER_OF_CALCIFICATIONS)
        assert n.value == lesion.speck_count
    # The region is selected from the analysed image.
    region_items = [
        c
        for g in pydicom.dcmread(path).ContentSequence
        if _concept(g) == ("126010", "DCM")
        for m in g.ContentSequence
        for c in m.ContentSequence
        if c.ValueType == "SCOORD"
    ]
    assert len(region_items) == len(f.lesions)
    for item in region_items:
        (ref,) = item.ContentSequence
        assert ref.RelationshipType == "SELECTED FROM"
        assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == f.sop_uid


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", ["tid1500", "cad_sr"])
def test_findings_survive_the_round_trip_through_each_sr(run, analysed, kind):
    _, out, _, _ = run
    for name, f in analysed.items():
        paths = dicom_output_paths(name, out)
        back = read_sr(paths[kind], seg=paths["seg"])
        assert back.sop_uid == f.sop_uid and back.study_uid == f.study_uid
        assert back.image_shape == f.image_shape and back.spacing_mm == pytest.approx(f.spacing_mm)
        assert (back.laterality, back.view) == (f.laterality, f.view)
        assert back.model.sha256 == f.model.sha256 and back.score_threshold == pytest.approx(f.score_threshold)
        assert back.model.settings_sha256 == f.model.settings_sha256 is not None
        assert back.risk.probability == pytest.approx(f.risk.probability, abs=1e-9)
        assert back.risk.category == f.risk.category
        assert [w for w in back.warnings if w != MERGED_SPECKS_WARNING] == f.warnings
        assert len(back.lesions) == len(f.lesions)
        for a, b in zip(f.lesions, back.lesions):
            np.testing.assert_allclose(b.box_px, a.box_px, atol=0.5)
            assert b.label == a.label
            assert b.score == pytest.approx(a.score, abs=1e-9)
            assert b.p_malignant == pytest.approx(a.p_malignant, abs=1e-9)
            assert b.speck_count == a.speck_count
            np.testing.assert_allclose(
                np.reshape([s.centroid_px for s in b.specks], (-1, 2)),
                np.reshape([s.centroid_px for s in a.specks], (-1, 2)),
                atol=1e-3,
            )
            if MERGED_SPECKS_WARNING not in back.warnings:  # exact unless same-class lesions overlap
                assert [s.area_px for s in b.specks] == [s.area_px for s in a.specks]
                np.testing.assert_array_equal(b.speck_mask, a.speck_mask)
        # Without the SEG: the same counts and centres, no sizes, and a warning saying so.
        bare = read_sr(paths[kind])
        assert [les.speck_count for les in bare.lesions] == [les.speck_count for les in f.lesions]
        if any(les.specks for les in f.lesions):
            assert NO_SPECK_SIZES_WARNING in bare.warnings


def test_seg_frames_equal_the_speck_masks(run, analysed):
    _, out, _, _ = run
    for name, f in analysed.items():
        seg = pydicom.dcmread(dicom_output_paths(name, out)["seg"])
        assert (seg.Rows, seg.Columns) == f.image_shape
        assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == f.sop_uid
        frames = seg.pixel_array.reshape(-1, *f.image_shape)
        labels = [str(s.SegmentLabel) for s in seg.SegmentSequence]
        assert labels == [f"{c} calcification specks" for c in SEG_CLASSES]
        expected = class_masks(f)
        for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
            number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            np.testing.assert_array_equal(frames[index].astype(bool), expected[SEG_CLASSES[number - 1]])


def test_gsps_graphics_are_the_boxes_on_our_layer(run, analysed):
    _, out, _, _ = run
    for name, f in analysed.items():
        ps = pydicom.dcmread(dicom_output_paths(name, out)["gsps"])
        assert ps.Modality == "PR" and ps.Laterality == f.laterality
        assert ps.GraphicLayerSequence[0].GraphicLayer == "MICROCALCAI"
        annotations = list(ps.get("GraphicAnnotationSequence", []))
        if not f.lesions:
            assert not annotations
            continue
        (annotation,) = annotations
        assert annotation.GraphicLayer == "MICROCALCAI"
        assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == f.sop_uid
        graphics = annotation.GraphicObjectSequence
        assert len(graphics) == len(f.lesions)
        for graphic, lesion in zip(graphics, f.lesions):
            assert graphic.GraphicType == "POLYLINE" and graphic.GraphicAnnotationUnits == "PIXEL"
            np.testing.assert_allclose(np.reshape(graphic.GraphicData, (-1, 2)), box_polyline(lesion.box_px), atol=1e-3)
        texts = [t.UnformattedTextValue for t in annotation.TextObjectSequence]
        assert texts == [f"L{les.id} {les.label} {les.p_malignant:.2f}" for les in f.lesions]


# --------------------------------------------------------------------------- identity


def test_deidentify_removes_identity_and_keeps_the_references(run, analysed, tmp_path):
    result, _, _, _ = run
    name = "1-130"  # a CBIS film: its identity is in PatientID/Name
    f = analysed[name]
    source = Path(f.source)
    before = _sha256(source)
    original = pydicom.dcmread(source, stop_before_pixels=True)
    identity = str(original.PatientID)
    assert identity
    written = write_dicom_outputs(f, source, tmp_path, deidentify=True)
    assert _sha256(source) == before
    for path in written:
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) == "" and ds.PatientID == "" and ds.get("PatientBirthDate", "") == ""
        assert ds.PatientIdentityRemoved == "YES"
        assert {c.CodeValue for c in ds.DeidentificationMethodCodeSequence} == {"113100", "113110"}
        assert not any(elem.tag.is_private for elem in ds.iterall())
        assert ds.StudyInstanceUID == original.StudyInstanceUID  # Retain UIDs Option
        assert identity.encode() not in path.read_bytes()
        if shutil.which("dciodvfy") and shutil.which("dsrdump"):
            assert _validate(path) == [], path.name
    assert dicom_outputs_complete(name, tmp_path, deidentify=True)
    assert not dicom_outputs_complete(name, tmp_path, deidentify=False)
    # Read back: same findings, no identity.
    back = read_sr(written[1])
    assert back.patient_id is None and back.sop_uid == f.sop_uid


def test_objects_refuse_a_source_that_is_not_the_analysed_image(analysed, cbis_cases, tmp_path):
    f = analysed["sim_R_CC"]
    other = next(iter(cbis_cases[0].values()))
    with pytest.raises(InputError, match="not the analysed image"):
        write_dicom_outputs(f, other, tmp_path)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- re-runs and commands


def test_rerun_keeps_complete_objects_and_restores_missing_ones_without_reanalysis(run, analysed, tmp_path):
    from MicrocalcAI.core.batch import run_batch

    _, out, analyzer, _ = run
    target = tmp_path / "out"
    shutil.copytree(out, target)
    paths = dicom_output_paths("sim_R_CC", target)
    stamps = {p: p.stat().st_mtime_ns for p in paths.values()}
    again = run_batch([SAMPLE], target, analyzer=analyzer, dicom=True)
    assert again.skipped == [str(SAMPLE)] and again.dicom == {}
    assert {p: p.stat().st_mtime_ns for p in paths.values()} == stamps
    paths["gsps"].unlink()
    again = run_batch([SAMPLE], target, analyzer=analyzer, dicom=True)
    assert again.skipped == [str(SAMPLE)] and not again.analysed  # findings reused, not re-analysed
    assert paths["gsps"].is_file() and set(again.dicom) == {"sim_R_CC"}
    again = run_batch([SAMPLE], target, analyzer=analyzer, dicom=True, deidentify=True)
    assert not again.analysed and pydicom.dcmread(paths["cad_sr"]).PatientIdentityRemoved == "YES"
    # Findings replaced by a later run without --dicom: the older objects are stale, redone.
    from MicrocalcAI.core.outputs.findings_json import write_image_json

    earlier = load_image_json(target / "sim_R_CC.json")
    earlier.lesions = earlier.lesions[:1]
    write_image_json(earlier, target)
    again = run_batch([SAMPLE], target, analyzer=analyzer, dicom=True, deidentify=True)
    assert not again.analysed and set(again.dicom) == {"sim_R_CC"}
    assert len(read_sr(paths["tid1500"]).lesions) == 1


def test_render_recreates_json_and_overlay_from_the_srs(run, analysed, tmp_path, cbis_cases):
    from MicrocalcAI.cli import main

    _, out, _, _ = run
    pacs = tmp_path / "pacs"
    pacs.mkdir()
    for name in analysed:
        for path in dicom_output_paths(name, out).values():
            shutil.copy(path, pacs / path.name)
    image_dirs = [str(SAMPLE.parent), *{str(p.parent) for p in CBIS_VIEWS(cbis_cases)}]
    rc = main(["render", str(pacs), "--images", *image_dirs, "--out", str(tmp_path / "again"), "--quiet"])
    assert rc == 0
    for name, f in analysed.items():
        back = load_image_json(tmp_path / "again" / f"{name}.json")
        np.testing.assert_allclose(
            np.reshape([les.box_px for les in back.lesions], (-1, 4)),
            np.reshape([les.box_px for les in f.lesions], (-1, 4)),
            atol=0.5,
        )
        assert Path(back.source) == Path(f.source)
        a = np.asarray(Image.open(out / f"{name}_overlay.png"))
        b = np.asarray(Image.open(tmp_path / "again" / f"{name}_overlay.png"))
        np.testing.assert_array_equal(a, b)
    # Without the images: JSON only, and a non-zero exit saying something is missing.
    rc = main(["render", str(pacs), "--out", str(tmp_path / "json_only"), "--quiet"])
    assert rc == 1 and len(list((tmp_path / "json_only").glob("*_overlay.png"))) == 0
    assert len(list((tmp_path / "json_only").glob("*.json"))) == len(analysed)


def test_deidentify_without_dicom_is_a_usage_error(tmp_path):
    from MicrocalcAI.cli import main

    assert main(["detect", str(SAMPLE), "--out", str(tmp_path), "--deidentify", "--quiet"]) == 2
    assert not list(tmp_path.iterdir())


def test_slicer_export_dicom_writes_the_shown_findings(analysed, tmp_path):
    """The module's Export DICOM path (runner.export_dicom) on a real MRML scene."""
    pytest.importorskip("slicer")
    from _slicer_helpers import add_volume, new_scene, spec

    from MicrocalcAIModuleLib import runner
    from MicrocalcAIModuleLib import scene as scene_lib
    from MicrocalcAIModuleLib.geometry import PixelMapping
    from MicrocalcAIModuleLib.scene import DisplayOptions
    from MicrocalcAIModuleLib.volumes import DicomSource

    f = analysed["sim_R_CC"]
    scene = new_scene()
    volume = add_volume(scene, np.zeros(f.image_shape, dtype=np.int16))
    scene_lib.write_results(
        scene, volume, f, PixelMapping.identity(f.image_shape), spec(), DisplayOptions(threshold=0.1)
    )
    threshold = sorted(les.score for les in f.lesions)[1] + 1e-6  # hide the least confident lesions
    scene_lib.update_display(scene, volume, DisplayOptions(threshold=threshold))
    shown = [les for les in f.lesions if les.score >= threshold]
    assert runner.dicom_export_function() is write_dicom_outputs
    written = runner.export_dicom(scene, [volume], tmp_path, lambda v: DicomSource(file=str(SAMPLE)))
    assert sorted(p.name for p in written) == sorted(p.name for p in dicom_output_paths(f.name, tmp_path).values())
    back = read_sr(dicom_output_paths(f.name, tmp_path)["tid1500"])
    assert sorted(les.score for les in back.lesions) == pytest.approx(sorted(les.score for les in shown))
    with pytest.raises(LookupError, match="no analysed DICOM source"):
        runner.export_dicom(scene, [volume], tmp_path, lambda v: DicomSource(file=None))


@pytest.mark.parametrize("n_specks", [0, 1, 4])
def test_round_trip_of_lesions_with_no_one_or_many_specks(tmp_path, n_specks):
    """Edge cases the model may not produce on the test images: 0 and 1 speck, no lesions,
    boxes on the image border, and integer and fractional coordinates."""
    from _findings_helpers import image_findings, lesion

    header = pydicom.dcmread(SAMPLE, stop_before_pixels=True)
    rows, cols = int(header.Rows), int(header.Columns)
    mask = np.zeros((31, 41), dtype=bool)  # the window of the box below
    for k in range(n_specks):
        mask[3 + 6 * k : 5 + 6 * k, 4 : 7 + k] = True
    lesions = [
        lesion(1, "malignant", 0.9, (100.25, 200.5, 140.25, 230.5), mask=mask),
        lesion(2, "benign", 0.2, (cols - 30.0, 0.0, float(cols), 25.0), mask=np.zeros((25, 30), dtype=bool)),
    ]
    f = image_findings("edge", lesions=lesions, shape=(rows, cols), laterality="R", view="MLO")
    f.sop_uid, f.study_uid = str(header.SOPInstanceUID), str(header.StudyInstanceUID)
    paths = write_dicom_outputs(f, SAMPLE, tmp_path)
    for kind in (0, 1):
        back = read_sr(paths[kind], seg=paths[3])
        assert [les.speck_count for les in back.lesions] == [n_specks, 0]
        for a, b in zip(f.lesions, back.lesions):
            np.testing.assert_allclose(b.box_px, a.box_px, atol=1e-3)
            np.testing.assert_array_equal(b.speck_mask, a.speck_mask)
            assert [s.area_px for s in b.specks] == [s.area_px for s in a.specks]
            np.testing.assert_allclose(
                np.reshape([s.centroid_px for s in b.specks], (-1, 2)),
                np.reshape([s.centroid_px for s in a.specks], (-1, 2)),
                atol=1e-3,
            )
    empty = image_findings("none", lesions=[], shape=(rows, cols))
    empty.sop_uid = str(header.SOPInstanceUID)
    paths = write_dicom_outputs(empty, SAMPLE, tmp_path)
    assert [read_sr(paths[k]).lesions for k in (0, 1)] == [[], []]
    cad = pydicom.dcmread(paths[0])
    summary = next(c for c in cad.ContentSequence if _concept(c) == _key(codes.CAD_PROCESSING_AND_FINDINGS_SUMMARY))
    assert _concept(summary, "ConceptCodeSequence") == ("111241", "DCM")  # without findings
    if shutil.which("dciodvfy"):
        for path in paths:
            proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
            assert "Error" not in proc.stdout + proc.stderr, path.name


def _validate(path: Path) -> list[str]:
    """dciodvfy's Error lines, and for an SR also dsrdump's E: lines."""
    proc = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "Error" in line]
    if path.name.endswith(".sr.dcm"):
        proc = subprocess.run([_tool("dsrdump"), str(path)], capture_output=True, text=True)
        errors += [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("E:")]
    return errors


@pytest.mark.slow
def test_the_other_six_real_films_validate_and_round_trip(run, cbis_cases, tmp_path):
    """The remaining CBIS-DDSM views (the quick tests cover two of the eight)."""
    from MicrocalcAI.core.batch import run_batch

    _, _, analyzer, _ = run
    others = [p for case in cbis_cases for p in case.values() if p not in CBIS_VIEWS(cbis_cases)]
    assert len(others) == 6
    result = run_batch(others, tmp_path, analyzer=analyzer, dicom=True)
    assert not result.failed and len(result.dicom) == 6
    for f in result.images:
        paths = dicom_output_paths(f.name, tmp_path)
        for path in paths.values():
            assert _validate(path) == [], path.name
        for kind in ("cad_sr", "tid1500"):
            back = read_sr(paths[kind], seg=paths["seg"])
            assert [les.label for les in back.lesions] == [les.label for les in f.lesions]
            assert [les.speck_count for les in back.lesions] == [les.speck_count for les in f.lesions]
            for a, b in zip(f.lesions, back.lesions):
                np.testing.assert_allclose(b.box_px, a.box_px, atol=0.5)
                assert b.p_malignant == pytest.approx(a.p_malignant, abs=1e-9)


def test_overlapping_lesions_of_one_class_keep_every_speck_and_say_which_lost_its_size(tmp_path):
    from _findings_helpers import image_findings, lesion

    header = pydicom.dcmread(SAMPLE, stop_before_pixels=True)
    shape = (int(header.Rows), int(header.Columns))
    # Specks are segmented per box with local statistics, so one physical speck in the overlap
    # may get different pixels in each lesion: here B's version of it is larger than A's.
    a_full, b_full = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    a_full[210:213, 104:107] = True  # inside A only
    a_full[210:213, 128:130] = True  # the shared speck as A sees it
    b_full[209:214, 127:132] = True  # ... and as B sees it
    a_mask, b_mask = a_full[200:230, 100:130].copy(), b_full[200:230, 125:160].copy()
    a = lesion(1, "malignant", 0.9, (100.0, 200.0, 130.0, 230.0), mask=a_mask)
    b = lesion(2, "malignant", 0.8, (125.0, 200.0, 160.0, 230.0), mask=b_mask)
    f = image_findings("overlap", lesions=[a, b], shape=shape)
    f.sop_uid = str(header.SOPInstanceUID)
    paths = write_dicom_outputs(f, SAMPLE, tmp_path)
    back = read_sr(paths[1], seg=paths[3])
    assert MERGED_SPECKS_WARNING in back.warnings
    got_a, got_b = back.lesions
    assert [s.area_px for s in got_a.specks] == [9, 0]  # the merged speck keeps its centre only
    np.testing.assert_allclose(got_a.specks[1].centroid_px, a.specks[1].centroid_px, atol=1e-3)
    assert [s.area_px for s in got_b.specks] == [s.area_px for s in b.specks] == [25]
    np.testing.assert_array_equal(got_b.speck_mask, b.speck_mask)
