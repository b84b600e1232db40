"""The Slicer module's MRML code on the real MRML library (slicer-core), no Slicer application.

What a user sees in Slicer is checked against references computed independently from the
volume's IJK-to-RAS matrix: ROI centres and sizes, speck voxels, table rows, subject
hierarchy placement, replacement on re-run, threshold changes without re-analysis, and the
volume -> Mammogram conversion (MONOCHROME1, laterality/view, flipped pixel grids).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("slicer-core (the MRML library) is not installed", allow_module_level=True)

from _slicer_helpers import (  # noqa: E402
    add_volume,
    box_corners_ras,
    ijk_to_ras,
    make_findings,
    make_lesion,
    new_scene,
    nodes_of_class,
    put_under_study,
    roi_corners_world,
    rotation,
    same_point_set,
    segment_image_to_world,
    segment_voxels,
    spec,
    standard_lesions,
    table_rows,
)

from MicrocalcAIModuleLib import scene as scene_lib  # noqa: E402
from MicrocalcAIModuleLib.geometry import PixelMapping, roi_geometry_for_box  # noqa: E402
from MicrocalcAIModuleLib.scene import DisplayOptions  # noqa: E402
from MicrocalcAIModuleLib.volumes import DicomSource, match_pixel_mapping, volume_to_mammogram  # noqa: E402

SHAPE = (120, 90)  # rows, columns

LPS = np.diag([-1.0, -1.0, 1.0])  # what Slicer's DICOM loader gives a mammogram without orientation
PERMUTED = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # i -> A, j -> -R
OBLIQUE = rotation((0.2, 0.3, 1.0), 33.0) @ LPS

GEOMETRIES = {
    "identity": dict(spacing=(0.1, 0.1, 1.0), origin=(0.0, 0.0, 0.0), directions=np.eye(3)),
    "lps-dicom": dict(spacing=(0.07, 0.07, 1.0), origin=(-12.5, 40.0, 3.0), directions=LPS),
    "anisotropic-permuted": dict(spacing=(0.05, 0.085, 2.0), origin=(5.0, -7.0, 11.0), directions=PERMUTED),
    "oblique": dict(spacing=(0.1, 0.06, 1.5), origin=(1.0, 2.0, 3.0), directions=OBLIQUE),
}


def _scene_with_results(
    geometry: str = "lps-dicom", mapping: PixelMapping | None = None, options: DisplayOptions | None = None
):
    scene = new_scene()
    g = GEOMETRIES[geometry]
    plane_shape = mapping.plane_shape if mapping else SHAPE
    volume = add_volume(scene, np.zeros(plane_shape, dtype=np.int16), **g)
    _, study = put_under_study(scene, volume)
    lesions = standard_lesions()
    findings = make_findings(lesions, SHAPE)
    mapping = mapping or PixelMapping.identity(SHAPE)
    nodes = scene_lib.write_results(scene, volume, findings, mapping, spec(), options or DisplayOptions(threshold=0.1))
    return scene, volume, study, findings, mapping, nodes


# --------------------------------------------------------------------------------- geometry


def test_half_pixel_convention_box_of_one_pixel_is_centred_on_its_ijk_index():
    m = PixelMapping.identity((10, 10))
    assert m.box_to_ijk_bounds([3, 4, 4, 5]) == (2.5, 3.5, 3.5, 4.5)
    matrix = np.diag([0.5, 0.25, 1.0, 1.0])
    g = roi_geometry_for_box(matrix, m, [3, 4, 4, 5])
    # The centre of pixel (row 4, col 3) is IJK (3, 4): RAS (1.5, 1.0, 0).
    np.testing.assert_allclose(g.center, [1.5, 1.0, 0.0])
    np.testing.assert_allclose(g.size, [0.5, 0.25, 1.0])


@pytest.mark.parametrize("mapping", PixelMapping.all_mappings((7, 11)), ids=str)
def test_pixel_mapping_moves_masks_and_points_together(mapping):
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 1000, size=(7, 11))
    plane = mapping.stored_to_plane(stored)
    assert plane.shape == mapping.plane_shape
    np.testing.assert_array_equal(mapping.plane_to_stored(plane), stored)
    for r, c in [(0, 0), (6, 10), (3, 4), (2, 9)]:
        i, j = mapping.stored_to_ijk(np.array([[c + 0.5, r + 0.5]]))[0]
        assert plane[int(round(j)), int(round(i))] == stored[r, c]
        np.testing.assert_allclose(mapping.ijk_to_stored(np.array([[i, j]]))[0], [c + 0.5, r + 0.5])
    window = np.zeros((3, 4), dtype=bool)
    window[0, 1] = window[2, 3] = True
    plane_mask, (j0, i0) = mapping.mask_to_plane(window, (2, 5))
    full = np.zeros((7, 11), dtype=bool)
    full[2:5, 5:9] = window
    expected = mapping.stored_to_plane(full)
    got = np.zeros(mapping.plane_shape, dtype=bool)
    got[j0 : j0 + plane_mask.shape[0], i0 : i0 + plane_mask.shape[1]] = plane_mask
    np.testing.assert_array_equal(got, expected)
    assert PixelMapping.from_json(mapping.to_json()) == mapping


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_roi_centre_and_size_equal_the_box_mapped_through_ijk_to_ras(geometry):
    scene, volume, _, findings, mapping, nodes = _scene_with_results(geometry)
    matrix = ijk_to_ras(volume)
    assert len(nodes.rois) == len(findings.lesions) == 3
    for lesion, roi in zip(findings.lesions, nodes.rois):
        x0, y0, x1, y1 = lesion.box_px
        reference = box_corners_ras(matrix, (x0 - 0.5, y0 - 0.5, x1 - 0.5, y1 - 0.5))
        centre = [0.0, 0.0, 0.0]
        roi.GetCenterWorld(centre)
        np.testing.assert_allclose(centre, reference.mean(axis=0), atol=1e-9)
        assert same_point_set(roi_corners_world(roi), reference, atol=1e-5), geometry
        if geometry != "oblique":  # axis-aligned volumes get RAS-aligned ROIs: size = RAS extent
            np.testing.assert_allclose(roi.GetSize(), reference.max(axis=0) - reference.min(axis=0), atol=1e-9)
        assert roi.GetLocked()
        assert roi.GetName() == f"L{lesion.id} {lesion.label} {lesion.p_malignant:.2f}"
        assert roi.GetAttribute("MicrocalcAI.Label") == lesion.label
        assert float(roi.GetAttribute("MicrocalcAI.Score")) == pytest.approx(lesion.score)
        assert "score" in roi.GetDescription() and "speck" in roi.GetDescription()
        colour = roi.GetDisplayNode().GetSelectedColor()
        assert tuple(colour) == pytest.approx(scene_lib.CLASS_COLOURS[lesion.label])


def test_rois_follow_the_volumes_parent_transform():
    import vtk

    scene = new_scene()
    volume = add_volume(scene, np.zeros(SHAPE, dtype=np.int16), spacing=(0.1, 0.1, 1.0), directions=LPS)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T")
    t = np.eye(4)
    t[:3, :3] = rotation((0, 0, 1), 20.0)
    t[:3, 3] = [10.0, -4.0, 2.5]
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, t[r, c])
    transform.SetMatrixTransformToParent(m)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    findings = make_findings(standard_lesions(), SHAPE)
    nodes = scene_lib.write_results(
        scene, volume, findings, PixelMapping.identity(SHAPE), spec(), DisplayOptions(threshold=0.1)
    )
    matrix = ijk_to_ras(volume)
    for lesion, roi in zip(findings.lesions, nodes.rois):
        assert roi.GetTransformNodeID() == transform.GetID()
        x0, y0, x1, y1 = lesion.box_px
        local = box_corners_ras(matrix, (x0 - 0.5, y0 - 0.5, x1 - 0.5, y1 - 0.5))
        world = (t @ np.c_[local, np.ones(8)].T).T[:, :3]
        assert same_point_set(roi_corners_world(roi), world, atol=1e-5)
    assert nodes.segmentation.GetTransformNodeID() == transform.GetID()


def test_flipped_pixel_grid_maps_boxes_and_masks_onto_the_volume():
    mapping = PixelMapping(SHAPE, flip_rows=True, flip_cols=True)
    scene, volume, _, findings, _, nodes = _scene_with_results("lps-dicom", mapping=mapping)
    matrix = ijk_to_ras(volume)
    rows, cols = SHAPE
    for lesion, roi in zip(findings.lesions, nodes.rois):
        x0, y0, x1, y1 = lesion.box_px
        # Both axes flipped: stored corner x -> plane corner cols - x, then IJK = corner - 0.5.
        bounds = (cols - x1 - 0.5, rows - y1 - 0.5, cols - x0 - 0.5, rows - y0 - 0.5)
        assert same_point_set(roi_corners_world(roi), box_corners_ras(matrix, bounds), atol=1e-5)
    seg = nodes.segmentation
    first = seg.GetSegmentation().GetNthSegmentID(0)
    expected = {(cols - 1 - c, rows - 1 - r, 0) for r, c in [(22, 12), (22, 13), (30, 25), (34, 29)]}
    assert segment_voxels(seg, first) == expected


# --------------------------------------------------------------------------------- segmentation


@pytest.mark.parametrize("geometry", ["lps-dicom", "oblique"])
def test_segments_hold_exactly_the_speck_pixels_in_the_volume_geometry(geometry):
    scene, volume, _, findings, _, nodes = _scene_with_results(geometry)
    seg = nodes.segmentation
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(findings.lesions)
    assert seg.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) is volume
    for index, lesion in enumerate(findings.lesions):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        assert segment.GetName() == f"L{lesion.id} {lesion.label} specks"
        r0, c0 = lesion.mask_origin
        rows, cols = np.nonzero(lesion.speck_mask)
        expected = {(int(c0 + c), int(r0 + r), 0) for r, c in zip(rows, cols)}
        voxels = segment_voxels(seg, segment_id)
        assert len(voxels) == int(lesion.speck_mask.sum())
        assert voxels == expected
        np.testing.assert_allclose(segment_image_to_world(seg, segment_id), ijk_to_ras(volume), atol=1e-12)
        assert tuple(segment.GetColor()) == pytest.approx(scene_lib.CLASS_COLOURS[lesion.label])


def test_segments_per_class_are_the_union_of_the_lesion_masks():
    scene, volume, _, findings, _, nodes = _scene_with_results(
        options=DisplayOptions(threshold=0.1, segments_per="class")
    )
    segmentation = nodes.segmentation.GetSegmentation()
    names = {
        segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName(): segmentation.GetNthSegmentID(i)
        for i in range(segmentation.GetNumberOfSegments())
    }
    assert set(names) == {"malignant specks", "benign specks"}
    for label in ("malignant", "benign"):
        expected = set()
        for lesion in findings.lesions:
            if lesion.label == label:
                r0, c0 = lesion.mask_origin
                expected |= {(int(c0 + c), int(r0 + r), 0) for r, c in zip(*np.nonzero(lesion.speck_mask))}
        assert segment_voxels(nodes.segmentation, names[f"{label} specks"]) == expected


# --------------------------------------------------------------------------------- table


def test_table_rows_match_the_findings_and_the_roi_centres():
    scene, volume, _, findings, _, nodes = _scene_with_results()
    rows = table_rows(nodes.table)
    assert len(rows) == len(findings.lesions)
    for row, lesion, roi in zip(rows, findings.lesions, nodes.rois):
        assert row["Lesion"] == f"L{lesion.id}"
        assert row["Class"] == lesion.label
        assert row["Score"] == pytest.approx(lesion.score)
        assert row["P(malignant)"] == pytest.approx(lesion.p_malignant)
        assert row["Specks"] == lesion.speck_count
        assert [row["x0 (px)"], row["y0 (px)"], row["x1 (px)"], row["y1 (px)"]] == pytest.approx(list(lesion.box_px))
        assert row["Width (mm)"] == pytest.approx(lesion.box_mm[2] - lesion.box_mm[0])
        centre = [0.0, 0.0, 0.0]
        roi.GetCenterWorld(centre)
        assert [row["R"], row["A"], row["S"]] == pytest.approx(centre)
    assert nodes.table.GetAttribute("MicrocalcAI.ImageRiskCategory") == findings.risk.category


# --------------------------------------------------------------------------------- hierarchy, re-run


def test_outputs_are_parented_under_the_inputs_study():
    scene, volume, study, _, _, nodes = _scene_with_results()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemParent(nodes.folder_item) == study
    for node in [*nodes.rois, nodes.segmentation, nodes.table, nodes.findings_node]:
        item = sh.GetItemByDataNode(node)
        assert item, node.GetName()
        assert sh.GetItemParent(item) == nodes.folder_item
        assert sh.GetItemAncestorAtLevel(item, "Study") == study


def _counts(scene):
    return {
        cls: len(nodes_of_class(scene, cls))
        for cls in ("vtkMRMLMarkupsROINode", "vtkMRMLMarkupsROIDisplayNode", "vtkMRMLSegmentationNode",
                    "vtkMRMLSegmentationDisplayNode", "vtkMRMLTableNode", "vtkMRMLTextNode")
    }  # fmt: skip


def test_rerunning_replaces_the_previous_results_of_that_volume_only():
    scene, volume, _, findings, mapping, first = _scene_with_results()
    other = add_volume(scene, np.zeros(SHAPE, dtype=np.int16), name="other")
    other_nodes = scene_lib.write_results(
        scene,
        other,
        make_findings(standard_lesions()[:1], SHAPE, name="o"),
        mapping,
        spec(),
        DisplayOptions(threshold=0.1),
    )
    before = _counts(scene)
    old_ids = [n.GetID() for n in [*first.rois, first.segmentation, first.table, first.findings_node]]
    second = scene_lib.write_results(scene, volume, findings, mapping, spec(), DisplayOptions(threshold=0.1))
    assert _counts(scene) == before
    assert all(scene.GetNodeByID(i) is None for i in old_ids)
    assert len(second.rois) == 3
    assert all(scene.GetNodeByID(n.GetID()) is n for n in [*other_nodes.rois, other_nodes.table])
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    import vtk

    items = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), items, True)
    names = [sh.GetItemName(items.GetId(i)) for i in range(items.GetNumberOfIds())]
    assert names.count(f"MicrocalcAI - {volume.GetName()}") == 1
    assert scene_lib.remove_results(scene, volume) == 3 + 1 + 1 + 1
    assert scene_lib.current_result_nodes(scene, volume) is None
    assert len(nodes_of_class(scene, "vtkMRMLMarkupsROIDisplayNode")) == len(other_nodes.rois)


# --------------------------------------------------------------------------------- threshold, visibility


def test_changing_the_threshold_updates_the_nodes_without_rerunning():
    scene, volume, _, findings, _, nodes = _scene_with_results()
    shown = scene_lib.update_display(scene, volume, DisplayOptions(threshold=0.5))
    kept = [les for les in findings.lesions if les.score >= 0.5]
    assert [r.GetName() for r in shown.rois] == [
        f"L{i + 1} {les.label} {les.p_malignant:.2f}" for i, les in enumerate(kept)
    ]
    assert shown.segmentation.GetSegmentation().GetNumberOfSegments() == len(kept)
    assert [row["Score"] for row in table_rows(shown.table)] == pytest.approx([les.score for les in kept])
    assert len(nodes_of_class(scene, "vtkMRMLMarkupsROINode")) == len(kept)
    current = scene_lib.shown_findings(scene, volume)
    assert current.score_threshold == 0.5 and len(current.lesions) == 2
    # Raising above the most suspicious lesion's score drops the image risk to 0.
    scene_lib.update_display(scene, volume, DisplayOptions(threshold=0.95))
    assert scene_lib.shown_findings(scene, volume).risk.probability == 0.0
    # Lowering below the analysis threshold cannot invent lesions: the analysis one is used.
    back = scene_lib.update_display(scene, volume, DisplayOptions(threshold=0.0))
    assert len(back.rois) == 3 and scene_lib.shown_findings(scene, volume).score_threshold == pytest.approx(0.1)


def test_hiding_a_class_hides_its_rois_and_segments():
    scene, volume, _, findings, _, nodes = _scene_with_results()
    scene_lib.set_class_visibility(scene, volume, show_benign=False, show_malignant=True)
    for roi in nodes.rois:
        assert roi.GetDisplayNode().GetVisibility() == (roi.GetAttribute("MicrocalcAI.Label") == "malignant")
    seg = nodes.segmentation
    display = seg.GetDisplayNode()
    for index, lesion in enumerate(findings.lesions):
        assert display.GetSegmentVisibility(seg.GetSegmentation().GetNthSegmentID(index)) == (
            lesion.label == "malignant"
        )
    stored = scene_lib.load_stored(scene, volume)
    assert stored.options.show_benign is False and stored.options.show_malignant is True
    rebuilt = scene_lib.update_display(scene, volume)  # stored options are kept on rebuild
    assert [r.GetDisplayNode().GetVisibility() for r in rebuilt.rois] == [True, False, True]


# --------------------------------------------------------------------------------- risks


def test_breast_and_exam_risk_combine_the_views_of_the_scene():
    scene = new_scene()
    categories = [("low", 0.0), ("intermediate", 0.2), ("high", 0.5)]
    cc = add_volume(scene, np.zeros(SHAPE, dtype=np.int16), name="R CC")
    mlo = add_volume(scene, np.zeros(SHAPE, dtype=np.int16), name="R MLO")
    left = add_volume(scene, np.zeros(SHAPE, dtype=np.int16), name="L CC")
    mapping = PixelMapping.identity(SHAPE)
    les = standard_lesions()
    scene_lib.write_results(
        scene, cc, make_findings(les[1:2], SHAPE, name="rcc"), mapping, spec(categories), DisplayOptions(threshold=0.1)
    )
    scene_lib.write_results(
        scene,
        mlo,
        make_findings(les[:1], SHAPE, name="rmlo", view="MLO"),
        mapping,
        spec(categories),
        DisplayOptions(threshold=0.1),
    )
    scene_lib.write_results(
        scene,
        left,
        make_findings([], SHAPE, name="lcc", laterality="L"),
        mapping,
        spec(categories),
        DisplayOptions(threshold=0.1),
    )
    risks = scene_lib.scene_risks(scene, cc)
    assert risks.image.risk.probability == pytest.approx(0.55 * 0.40)  # score * P(malignant)
    assert risks.breast.risk.probability == pytest.approx(0.92 * 0.87)  # max of its CC and MLO
    assert risks.breast.risk.category == "high" and sorted(risks.breast.image_names) == ["rcc", "rmlo"]
    assert risks.exam.risk.probability == pytest.approx(0.92 * 0.87)
    left_risks = scene_lib.scene_risks(scene, left)
    assert left_risks.breast.risk.probability == 0.0 and left_risks.breast.risk.category == "low"
    assert scene_lib.scene_risks(scene, add_volume(scene, np.zeros(SHAPE, dtype=np.int16))) is None


def _unlike_training(flagged: bool = True):
    from MicrocalcAI.core.records import OodCheck

    return OodCheck(score=8.0, threshold=5.0, flagged=flagged, reasons=["noise 3x the training range"] if flagged else [],
                    measurements={"noise_ratio": 3.0})  # fmt: skip


def test_an_image_unlike_the_training_data_is_indeterminate_in_the_panel_and_the_table():
    scene = new_scene()
    cc = add_volume(scene, np.zeros(SHAPE, dtype=np.int16), name="R CC")
    mlo = add_volume(scene, np.zeros(SHAPE, dtype=np.int16), name="R MLO")
    mapping = PixelMapping.identity(SHAPE)
    les = standard_lesions()
    unsure = make_findings(les[:1], SHAPE, name="rcc", ood=_unlike_training())
    assert unsure.risk.category == "indeterminate"
    scene_lib.write_results(scene, cc, unsure, mapping, spec(), DisplayOptions(threshold=0.1))
    readable = make_findings(les[2:], SHAPE, name="rmlo", view="MLO", ood=_unlike_training(False))
    nodes = scene_lib.write_results(scene, mlo, readable, mapping, spec(), DisplayOptions(threshold=0.1))
    assert nodes.table.GetAttribute("MicrocalcAI.OodFlagged") == "false"

    risks = scene_lib.scene_risks(scene, cc)  # read back from the findings JSON in the scene
    assert risks.image.ood == unsure.ood
    assert (risks.image.risk.category, risks.image.risk.probability) == ("indeterminate", pytest.approx(0.92 * 0.87))
    assert risks.breast.risk.category == "indeterminate" and risks.breast.indeterminate_images == ["rcc"]
    assert risks.exam.risk.category == "indeterminate" and risks.exam.indeterminate_images == ["rcc"]
    warnings = scene_lib.risk_warnings(risks)
    assert len(warnings) == 1 and "unlike the model's training data" in warnings[0]
    assert "noise 3x the training range" in warnings[0]
    table = scene_lib.current_result_nodes(scene, cc).table
    assert table.GetAttribute("MicrocalcAI.ImageRiskCategory") == "indeterminate"
    assert table.GetAttribute("MicrocalcAI.OodFlagged") == "true"
    assert float(table.GetAttribute("MicrocalcAI.OodScore")) == 8.0

    # The readable view sees why its breast is indeterminate.
    mlo_risks = scene_lib.scene_risks(scene, mlo)
    assert mlo_risks.image.risk.category != "indeterminate"
    assert any("rests on rcc" in w for w in scene_lib.risk_warnings(mlo_risks))
    # The threshold slider re-scores the risk but cannot make the image readable.
    scene_lib.update_display(scene, cc, DisplayOptions(threshold=0.95))
    risks = scene_lib.scene_risks(scene, cc)
    assert risks.image.lesions == [] and risks.image.risk.category == "indeterminate"
    assert scene_lib.risk_colour("indeterminate") == scene_lib.RISK_COLOURS["indeterminate"]


def test_panel_has_no_confidence_warning_without_an_ood_check():
    scene, volume, *_ = _scene_with_results()
    risks = scene_lib.scene_risks(scene, volume)
    assert risks.image.ood is None and scene_lib.risk_warnings(risks) == []
    assert scene_lib.current_result_nodes(scene, volume).table.GetAttribute("MicrocalcAI.OodFlagged") is None


# --------------------------------------------------------------------------------- volume -> Mammogram


def test_volume_without_dicom_file_uses_its_array_and_the_tags():
    scene = new_scene()
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4095, size=(200, 150)).astype(np.uint16)
    volume = add_volume(scene, pixels, spacing=(0.07, 0.065, 1.0), directions=LPS, name="1: MG image")
    tags = DicomSource(tags={"PhotometricInterpretation": "MONOCHROME1", "ImageLaterality": "L", "ViewPosition": "MLO",
                             "PatientID": "P9", "StudyInstanceUID": "1.2.9", "PixelSpacing": "0.065\\0.07"})  # fmt: skip
    image = volume_to_mammogram(volume, dicom=tags)
    m = image.mammogram
    assert image.origin == "volume" and image.mapping.is_identity
    np.testing.assert_array_equal(m.pixels, pixels)  # rows = j, columns = i
    assert m.photometric == "MONOCHROME1"  # Slicer does not invert it: the engine must
    assert (m.laterality, m.laterality_source) == ("L", "ImageLaterality")
    assert (m.view, m.view_source) == ("MLO", "ViewPosition")
    assert m.spacing_mm == pytest.approx((0.065, 0.07)) and m.spacing_source == "PixelSpacing"
    assert (m.patient_id, m.study_uid) == ("P9", "1.2.9")


def test_volume_from_a_plain_file_gets_laterality_from_its_name_and_no_fake_spacing():
    scene = new_scene()
    pixels = np.random.default_rng(4).integers(0, 255, size=(100, 80)).astype(np.uint8)
    volume = add_volume(scene, pixels, spacing=(1.0, 1.0, 1.0), name="case7_RIGHT_CC")
    m = volume_to_mammogram(volume).mammogram
    assert m.spacing_mm is None  # 1 x 1 mm is Slicer's "no spacing in the file"
    assert any("spacing" in w for w in m.warnings)
    assert (m.laterality, m.view, m.laterality_source) == ("R", "CC", "filename")


@pytest.mark.parametrize(
    "flip", [(False, False, False), (False, True, False), (False, True, True), (True, False, True)]
)
def test_volume_from_a_dicom_file_reads_the_file_and_measures_the_grid_orientation(tmp_path, flip):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(5)
    stored = (rng.random((160, 120)) * 3000).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "x.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "MG", "PX", generate_uid(), generate_uid()
    ds.ImageLaterality, ds.ViewPosition, ds.ImagerPixelSpacing = "R", "CC", [0.1, 0.1]
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 160, 120, 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.PixelData = stored.tobytes()
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    del pydicom

    mapping = PixelMapping((160, 120), transpose=flip[0], flip_rows=flip[1], flip_cols=flip[2])
    scene = new_scene()
    # What a loader puts in the volume: rescaled values, possibly on a flipped grid.
    volume = add_volume(
        scene, (mapping.stored_to_plane(stored).astype(np.float32) * 2 - 100), spacing=(0.1, 0.1, 1.0), directions=LPS
    )
    image = volume_to_mammogram(volume, dicom=DicomSource(file=str(tmp_path / "x.dcm"), tags={}))
    assert image.origin == "dicom-file"
    assert image.mapping == mapping
    np.testing.assert_array_equal(image.mammogram.pixels, stored)  # the file as stored
    assert image.mammogram.photometric == "MONOCHROME1"
    assert (image.mammogram.laterality, image.mammogram.view) == ("R", "CC")


def test_match_pixel_mapping_refuses_an_unrelated_image():
    rng = np.random.default_rng(6)
    assert match_pixel_mapping(rng.random((50, 40)), rng.random((50, 40))) is None


def test_non_mammogram_volumes_are_refused_with_a_clear_message():
    from MicrocalcAIModuleLib.volumes import VolumeError, mammogram_volumes, volume_plane

    scene = new_scene()
    import vtk

    image = vtk.vtkImageData()
    image.SetDimensions(20, 20, 5)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    ct.SetAndObserveImageData(image)
    with pytest.raises(VolumeError, match="5 slices"):
        volume_plane(ct)
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(VolumeError, match="not a grey-scale"):
        volume_plane(label)
    mammo = add_volume(scene, np.zeros((80, 70), dtype=np.int16))
    assert mammogram_volumes(scene) == [mammo]
    with pytest.raises(VolumeError, match="CT image"):
        volume_to_mammogram(mammo, dicom=DicomSource(tags={"Modality": "CT"}))


# --------------------------------------------------------------------------------- export, models


def test_export_writes_the_shown_findings_in_the_engine_formats(tmp_path):
    from MicrocalcAI.core.outputs.findings_json import load_image_json
    from MicrocalcAIModuleLib.runner import export_results

    scene, volume, _, findings, _, _ = _scene_with_results()
    scene_lib.update_display(scene, volume, DisplayOptions(threshold=0.5))
    written = export_results(scene, [volume], tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["breasts.csv", "exams.csv", "images.csv", "img.json"]
    back = load_image_json(tmp_path / "img.json")
    assert [les.score for les in back.lesions] == pytest.approx([0.92, 0.55])
    assert back.score_threshold == 0.5
    np.testing.assert_array_equal(back.lesions[0].speck_mask, findings.lesions[0].speck_mask)
    with pytest.raises(LookupError):
        export_results(scene, [add_volume(scene, np.zeros(SHAPE, dtype=np.int16))], tmp_path)


def test_findings_survive_in_the_scene_as_the_engines_json():
    scene, volume, _, findings, mapping, nodes = _scene_with_results()
    doc = json.loads(nodes.findings_node.GetText())
    assert doc["schema_version"] and len(doc["lesions"]) == 3
    stored = scene_lib.load_stored(scene, volume)
    assert stored.mapping == mapping
    assert [les.box_px for les in stored.findings.lesions] == [les.box_px for les in findings.lesions]


def test_lesion_outside_or_empty_masks_do_not_break_the_segmentation():
    scene = new_scene()
    volume = add_volume(scene, np.zeros(SHAPE, dtype=np.int16))
    edge = make_lesion(1, "benign", 0.5, 0.2, (85.0, 110.0, 90.0, 120.0), [(119, 89)])
    empty = make_lesion(2, "malignant", 0.6, 0.1, (5.0, 5.0, 9.0, 9.0), [])
    nodes = scene_lib.write_results(
        scene,
        volume,
        make_findings([edge, empty], SHAPE),
        PixelMapping.identity(SHAPE),
        spec(),
        DisplayOptions(threshold=0.1),
    )
    segmentation = nodes.segmentation.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    counts = [len(segment_voxels(nodes.segmentation, segmentation.GetNthSegmentID(i))) for i in range(2)]
    assert counts == [1, 0]


# --------------------------------------------------------------------------------- engine end to end


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    pytest.importorskip("torch")
    from _slicer_helpers import write_random_model

    return write_random_model(tmp_path_factory.mktemp("model"))


def test_analyse_volume_runs_the_engine_and_the_nodes_match_its_findings(random_model):
    from MicrocalcAI.core.pipeline import Analyzer
    from MicrocalcAI.simulation.config import SimulationConfig
    from MicrocalcAI.simulation.simulate import simulate_image
    from MicrocalcAIModuleLib.runner import Canceller, analyse_volume

    pixels, meta, _ = simulate_image(
        np.random.default_rng(0),
        SimulationConfig(),
        laterality="R",
        view="CC",
        spacing_mm=0.1,
        size_mm=(60.0, 45.0),
        n_clusters=1,
    )
    scene = new_scene()
    volume = add_volume(scene, pixels, spacing=(0.1, 0.1, 1.0), directions=LPS, origin=(3.0, 4.0, 5.0), name="sim R CC")
    put_under_study(scene, volume)
    analyzer = Analyzer(str(random_model), "cpu")
    messages = []
    result = analyse_volume(
        scene, volume, analyzer, options=DisplayOptions(threshold=0.3), progress=lambda f, m: messages.append((f, m))
    )
    assert analyzer.score_threshold == 0.3  # restored after the run at the analysis floor
    assert result.all_findings.score_threshold == pytest.approx(0.1)
    assert result.findings.score_threshold == pytest.approx(0.3)
    assert all(les.score >= 0.3 for les in result.findings.lesions)
    assert len(result.nodes.rois) == len(result.findings.lesions)
    assert result.nodes.table.GetNumberOfRows() == len(result.findings.lesions)
    assert result.nodes.segmentation.GetSegmentation().GetNumberOfSegments() == len(result.findings.lesions)
    assert result.findings.laterality == "R" and result.findings.image_shape == pixels.shape
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    matrix = ijk_to_ras(volume)
    for lesion, roi in zip(result.findings.lesions, result.nodes.rois):
        x0, y0, x1, y1 = lesion.box_px
        assert same_point_set(
            roi_corners_world(roi), box_corners_ras(matrix, (x0 - 0.5, y0 - 0.5, x1 - 0.5, y1 - 0.5)), atol=1e-5
        )

    canceller = Canceller()
    canceller.cancel()
    from MicrocalcAI.core.errors import CancelledError

    before = [n.GetID() for n in scene_lib.result_nodes_of(scene, volume)]
    with pytest.raises(CancelledError):
        analyse_volume(scene, volume, analyzer, canceller=canceller)
    assert [n.GetID() for n in scene_lib.result_nodes_of(scene, volume)] == before  # a cancelled run changes nothing


def test_import_model_checks_the_manifest_entry_and_the_checksum(random_model, tmp_path):
    import shutil

    from MicrocalcAI.core.detect.manifest import resolve_model
    from MicrocalcAI.core.errors import ChecksumError, ModelError
    from MicrocalcAIModuleLib.models import available_models, import_model, model_card_html

    user_dir = tmp_path / "user-models"
    choice = import_model(random_model.parent / "r.safetensors", user_dir)
    assert choice.spec.name == "random" and not choice.bundled
    assert resolve_model(choice.reference).weights_path.is_file()
    assert [c.reference for c in available_models(user_dir) if not c.bundled] == [choice.reference]
    assert "mobilenet_v2" in model_card_html(choice.spec)

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(random_model.parent / "r.safetensors", lonely / "mine.safetensors")
    with pytest.raises(ModelError, match="manifest"):
        import_model(lonely / "mine.safetensors", user_dir)

    tampered = tmp_path / "tampered"
    shutil.copytree(random_model.parent, tampered)
    with open(tampered / "r.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\0\1\2\3")
    with pytest.raises(ChecksumError):
        import_model(tampered / "r.safetensors", tmp_path / "other-user-dir")
    assert not (tmp_path / "other-user-dir").exists() or not any((tmp_path / "other-user-dir").iterdir())


def test_requirements_are_checked_without_installing_anything(tmp_path):
    from MicrocalcAIModuleLib import dependencies
    from MicrocalcAIModuleLib.paths import requirements_path

    req = tmp_path / "requirements.txt"
    req.write_text(
        "# comment\nnumpy>=1.0\n--extra-index-url https://example.invalid\nsurely-not-installed-microcalcai-pkg>=1\nnumpy<1.0  # too old\n"
    )
    assert dependencies.read_requirements(req) == ["numpy>=1.0", "surely-not-installed-microcalcai-pkg>=1", "numpy<1.0"]
    assert dependencies.missing_requirements(dependencies.read_requirements(req)) == [
        "surely-not-installed-microcalcai-pkg>=1",
        "numpy<1.0",
    ]
    shipped = dependencies.read_requirements(requirements_path())
    assert shipped and not any(
        r.startswith(("torch", "torchvision")) for r in shipped
    )  # those come from the PyTorch extension


class _PydicomDatabase:
    """Stand-in for Slicer's ctkDICOMDatabase (not available outside Slicer): the two calls the
    module makes, answered from the real file with pydicom."""

    def __init__(self, files_by_uid):
        self.files_by_uid = files_by_uid

    def fileForInstance(self, uid):
        return self.files_by_uid.get(uid, "")

    def fileValue(self, path, tag):
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        group, element = (int(part, 16) for part in tag.split(","))
        elem = ds.get((group, element))
        if elem is None or elem.value is None:
            return ""
        value = elem.value
        return (
            "\\".join(str(v) for v in value)
            if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"
            else str(value)
        )


def test_bundled_sample_loaded_from_the_dicom_database_keeps_its_tags_and_grid():
    pydicom = pytest.importorskip("pydicom")
    from _slicer_helpers import REPO

    from MicrocalcAIModuleLib.volumes import dicom_source_from_database

    sample = REPO / "Resources" / "Samples" / "sim_R_CC.dcm"
    ds = pydicom.dcmread(sample)
    scene = new_scene()
    # What Slicer's DICOM scalar-volume loader produces for a mammogram without orientation tags.
    volume = add_volume(scene, ds.pixel_array, spacing=(0.1, 0.1, 1.0), directions=LPS, name="1: MicrocalcAI simulated sample",
                        attributes={"DICOM.instanceUIDs": ds.SOPInstanceUID})  # fmt: skip
    source = dicom_source_from_database(volume, _PydicomDatabase({ds.SOPInstanceUID: str(sample)}))
    assert source.file == str(sample)
    assert source.tags["ImageLaterality"] == "R" and source.tags["ViewPosition"] == "CC"
    assert source.tags["StudyInstanceUID"] == ds.StudyInstanceUID
    image = volume_to_mammogram(volume, dicom=source)
    assert image.origin == "dicom-file" and image.mapping.is_identity
    m = image.mammogram
    assert (m.laterality, m.view, m.photometric) == ("R", "CC", "MONOCHROME2")
    assert m.study_uid == ds.StudyInstanceUID and m.spacing_mm == pytest.approx((0.1, 0.1))
    # Without the file (moved or deleted), the tags from the database still give the metadata.
    tags_only = volume_to_mammogram(volume, dicom=DicomSource(file=None, tags=source.tags))
    assert tags_only.origin == "volume"
    assert (tags_only.mammogram.laterality, tags_only.mammogram.view) == ("R", "CC")
    assert tags_only.mammogram.laterality_source == "ImageLaterality"
    # A volume that did not come from DICOM has no database entry.
    assert (
        dicom_source_from_database(add_volume(scene, np.zeros((80, 80), dtype=np.int16)), _PydicomDatabase({})) is None
    )
