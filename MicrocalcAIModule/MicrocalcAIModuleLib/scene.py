"""Findings -> MRML nodes, and everything done to those nodes afterwards.

For one analysed volume the scene holds, in a subject-hierarchy folder under the volume's
study ("MicrocalcAI - <volume>"):

* a **text node** with the complete findings JSON (the engine's own format, at the analysis
  threshold), the pixel mapping and the risk categories: the source of truth, saved with
  the scene, from which everything below is rebuilt when the threshold changes, so a new
  threshold never re-runs the model;
* one locked **markups ROI per lesion** at the current threshold, named
  ``"L3 malignant 0.87"`` (lesion id, class, probability of malignancy), coloured by class,
  with score and descriptors in its description and attributes;
* one **segmentation** with the calcification specks (one segment per lesion or per class),
  its reference geometry taken from the volume;
* one **table** with the lesion list.

All of them follow the volume's parent transform and carry a node reference
(:data:`REF_SOURCE`) to the volume, so re-running replaces them instead of piling up.
Functions take the scene as an argument (no ``slicer.mrmlScene``), which lets the tests run
them on the real MRML library without the Slicer application.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np

from .geometry import PixelMapping, RoiGeometry, ijk_to_ras_matrix, roi_geometry_for_box

__all__ = [
    "ATTR_CATEGORIES",
    "ATTR_MAPPING",
    "ATTR_MODEL_THRESHOLD",
    "ATTR_PREFIX",
    "ATTR_ROLE",
    "ATTR_SEGMENTS_PER",
    "ATTR_SHOW_BENIGN",
    "ATTR_SHOW_MALIGNANT",
    "ATTR_SOURCE",
    "ATTR_THRESHOLD",
    "CLASS_COLOURS",
    "DISPLAY_ROLES",
    "REF_SOURCE",
    "RISK_COLOURS",
    "SEGMENTS_PER",
    "TABLE_COLUMNS",
    "DisplayOptions",
    "ResultNodes",
    "SceneRisks",
    "StoredFindings",
    "analysed_volumes",
    "class_colour",
    "combined_risks",
    "create_lesion_roi",
    "create_lesion_table",
    "create_speck_segmentation",
    "current_result_nodes",
    "ensure_segmentation_converters",
    "findings_node_of",
    "lesion_description",
    "lesion_node_name",
    "lesion_plane_mask",
    "load_stored",
    "node_belongs_to",
    "remove_node",
    "remove_results",
    "result_nodes_of",
    "results_folder",
    "risk_colour",
    "risk_warnings",
    "scene_risks",
    "set_class_visibility",
    "shown_findings",
    "store_findings",
    "study_item_of",
    "subject_hierarchy_item",
    "update_display",
    "write_results",
]


log = logging.getLogger(__name__)

ATTR_PREFIX = "MicrocalcAI."
ATTR_SOURCE = "MicrocalcAI.SourceVolumeID"  # on every result node and on the folder item
ATTR_ROLE = "MicrocalcAI.Role"  # "findings", "lesion", "specks", "table"
ATTR_THRESHOLD = "MicrocalcAI.DisplayThreshold"
ATTR_SHOW_BENIGN = "MicrocalcAI.ShowBenign"
ATTR_SHOW_MALIGNANT = "MicrocalcAI.ShowMalignant"
ATTR_SEGMENTS_PER = "MicrocalcAI.SegmentsPer"
ATTR_MAPPING = "MicrocalcAI.PixelMapping"
ATTR_CATEGORIES = "MicrocalcAI.RiskCategories"
ATTR_MODEL_THRESHOLD = "MicrocalcAI.ModelScoreThreshold"
#: Node reference role from every result node to its input volume (survives scene import).
REF_SOURCE = "MicrocalcAISource"

ROLE_FINDINGS, ROLE_LESION, ROLE_SPECKS, ROLE_TABLE = "findings", "lesion", "specks", "table"
DISPLAY_ROLES = (ROLE_LESION, ROLE_SPECKS, ROLE_TABLE)

#: Class colours (RGB 0-1), the same as the engine's overlay PNG: red malignant, yellow benign.
CLASS_COLOURS: dict[str, tuple[float, float, float]] = {"malignant": (1.0, 0.0, 0.0), "benign": (1.0, 1.0, 0.0)}
#: Risk category colours for the panel (hex), unknown categories grey; "indeterminate" (an
#: image unlike the model's training data) purple, as in the report.
RISK_COLOURS: dict[str, str] = {
    "low": "#2e7d32",
    "intermediate": "#ef6c00",
    "high": "#c62828",
    "indeterminate": "#6a1b9a",
}
SEGMENTS_PER = ("lesion", "class")

TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # name, type ("string", "double", "int"), description
    ("Lesion", "string", "lesion id, 1 = most suspicious"),
    ("Class", "string", "benign or malignant (detector class)"),
    ("Score", "double", "detector confidence of the class"),
    ("P(malignant)", "double", "probability that the lesion is malignant"),
    ("Specks", "int", "number of calcification specks segmented"),
    ("Width (mm)", "double", "box width"),
    ("Height (mm)", "double", "box height"),
    ("Area (mm2)", "double", "box area"),
    ("x0 (px)", "double", "box left edge, stored-pixel column"),
    ("y0 (px)", "double", "box top edge, stored-pixel row"),
    ("x1 (px)", "double", "box right edge, stored-pixel column"),
    ("y1 (px)", "double", "box bottom edge, stored-pixel row"),
    ("R", "double", "box centre, world RAS (mm)"),
    ("A", "double", "box centre, world RAS (mm)"),
    ("S", "double", "box centre, world RAS (mm)"),
)


@dataclass
class DisplayOptions:
    """What is shown for a volume's findings; changing it never re-runs the model."""

    threshold: Optional[float] = None  # lesion score threshold; None = the model's default
    show_benign: bool = True
    show_malignant: bool = True
    segments_per: str = "lesion"  # "lesion" or "class"


@dataclass
class ResultNodes:
    """The nodes showing one volume's findings (what ``process`` returns besides findings)."""

    volume: Any
    folder_item: int
    findings_node: Any  # vtkMRMLTextNode with the complete findings JSON
    rois: list[Any] = field(default_factory=list)  # vtkMRMLMarkupsROINode, in lesion order
    segmentation: Any = None  # vtkMRMLSegmentationNode
    table: Any = None  # vtkMRMLTableNode


@dataclass
class StoredFindings:
    """What a volume's findings node holds, decoded."""

    findings: Any  # ImageFindings at the analysis threshold (all lesions found)
    mapping: PixelMapping
    categories: list[Any]  # RiskCategory records of the model that made the findings
    model_threshold: float
    options: DisplayOptions


# ------------------------------------------------------------------------------ small helpers


def _slicer() -> Any:
    import slicer

    return slicer


def _sh(scene: Any) -> Any:
    return _slicer().vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def _iter_nodes(scene: Any, class_name: str = "vtkMRMLNode") -> Iterable[Any]:
    nodes = scene.GetNodesByClass(class_name)
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def _to_bool(text: Optional[str], default: bool) -> bool:
    if text is None or text == "":
        return default
    return text.strip().lower() in ("1", "true", "yes", "on")


def risk_colour(category: Optional[str]) -> str:
    """Hex colour of a risk category for the panel (grey when unknown)."""
    return RISK_COLOURS.get((category or "").lower(), "#757575")


def class_colour(label: str) -> tuple[float, float, float]:
    return CLASS_COLOURS.get(label, (0.0, 1.0, 1.0))


def lesion_node_name(lesion: Any) -> str:
    """``"L3 malignant 0.87"``: id, class and probability of malignancy, as users read it."""
    return f"L{lesion.id} {lesion.label} {lesion.p_malignant:.2f}"


def lesion_description(lesion: Any) -> str:
    """Human-readable descriptors of a lesion (ROI description, table tooltip)."""
    x0, y0, x1, y1 = lesion.box_mm
    return (
        f"{lesion.label}, score {lesion.score:.3f}, P(malignant) {lesion.p_malignant:.3f}; "
        f"{lesion.speck_count} speck(s); box {x1 - x0:.1f} x {y1 - y0:.1f} mm, area {lesion.area_mm2:.1f} mm2; "
        f"stored pixels [{', '.join(f'{v:.1f}' for v in lesion.box_px)}]. Research use only."
    )


def node_belongs_to(node: Any, volume: Any) -> bool:
    """True when ``node`` is a MicrocalcAI result of ``volume``."""
    return node is not None and volume is not None and node.GetNodeReferenceID(REF_SOURCE) == volume.GetID()


def _tag_result_node(node: Any, volume: Any, role: str) -> None:
    node.SetAttribute(ATTR_SOURCE, volume.GetID())
    node.SetAttribute(ATTR_ROLE, role)
    node.SetNodeReferenceID(REF_SOURCE, volume.GetID())
    transform_id = volume.GetTransformNodeID()
    if transform_id and node.IsA("vtkMRMLTransformableNode"):
        node.SetAndObserveTransformNodeID(transform_id)


def remove_node(scene: Any, node: Any) -> None:
    """Remove a node with its display and storage nodes (MRML leaves those behind)."""
    if node is None or node.GetScene() is not scene:
        return
    dependents = []
    if node.IsA("vtkMRMLDisplayableNode"):
        dependents += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        dependents += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    sh = _sh(scene)
    item = sh.GetItemByDataNode(node)
    if item:  # Slicer's subject hierarchy logic would drop it; the bare MRML library does not
        sh.RemoveItem(item, False, False)
    scene.RemoveNode(node)
    for dep in dependents:
        if dep is not None and dep.GetScene() is scene:
            scene.RemoveNode(dep)


def result_nodes_of(scene: Any, volume: Any, roles: Optional[Sequence[str]] = None) -> list[Any]:
    """Result nodes of a volume (optionally only some roles), in scene order."""
    out = []
    for node in _iter_nodes(scene):
        if node_belongs_to(node, volume) and (roles is None or node.GetAttribute(ATTR_ROLE) in roles):
            out.append(node)
    return out


# --------------------------------------------------------------------------- subject hierarchy


def subject_hierarchy_item(scene: Any, node: Any, parent_item: Optional[int] = None) -> int:
    """The node's subject hierarchy item, created if missing, moved under ``parent_item``.

    In Slicer every node gets an item automatically; with the bare MRML library it does not,
    so it is created here. Either way the item ends under the wanted parent.
    """
    sh = _sh(scene)
    item = sh.GetItemByDataNode(node)
    parent = parent_item if parent_item else sh.GetSceneItemID()
    if not item:
        item = sh.CreateItem(parent, node)
    elif parent_item and sh.GetItemParent(item) != parent_item:
        sh.SetItemParent(item, parent_item)
    return int(item)


def study_item_of(scene: Any, volume: Any) -> int:
    """The volume's study item (or its parent item when it has no study, else the scene)."""
    sh = _sh(scene)
    vol_item = subject_hierarchy_item(scene, volume)
    study_level = _slicer().vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()
    study = sh.GetItemAncestorAtLevel(vol_item, study_level)
    if study:
        return int(study)
    parent = sh.GetItemParent(vol_item)
    return int(parent) if parent else int(sh.GetSceneItemID())


def results_folder(scene: Any, volume: Any, create: bool = True) -> int:
    """The volume's results folder item under its study (0 when absent and not created)."""
    sh = _sh(scene)
    for item in _folder_items(scene, volume):
        return item
    if not create:
        return 0
    folder = sh.CreateFolderItem(study_item_of(scene, volume), f"MicrocalcAI - {volume.GetName()}")
    sh.SetItemAttribute(folder, ATTR_SOURCE, volume.GetID())
    sh.SetItemExpanded(folder, True)
    return int(folder)


def _folder_items(scene: Any, volume: Any) -> list[int]:
    import vtk

    sh = _sh(scene)
    children = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), children, True)
    out = []
    for i in range(children.GetNumberOfIds()):
        item = children.GetId(i)
        if sh.GetItemAttribute(item, ATTR_SOURCE) == volume.GetID() and not sh.GetItemDataNode(item):
            out.append(int(item))
    return out


# ----------------------------------------------------------------------------- stored findings


def _categories_of(spec: Any) -> list[tuple[str, float]]:
    return [(str(c.name), float(c.min_probability)) for c in spec.risk_categories]


def _decode_categories(text: Optional[str]) -> list[Any]:
    """The stored risk categories as the engine's RiskCategory records (the engine's
    defaults for a node saved without them)."""
    from MicrocalcAI.core.detect.manifest import DEFAULT_RISK_CATEGORIES, RiskCategory

    categories = [RiskCategory(str(n), float(p)) for n, p in json.loads(text or "[]")]
    return categories or list(DEFAULT_RISK_CATEGORIES)


def _display_threshold(stored: StoredFindings) -> float:
    """The threshold the nodes show: the chosen one, else the model's default."""
    return stored.model_threshold if stored.options.threshold is None else float(stored.options.threshold)


def _shown(stored: StoredFindings) -> Any:
    """The stored findings re-thresholded for display (the engine's rule, see
    :func:`MicrocalcAI.core.findings.threshold.rethreshold`)."""
    from MicrocalcAI.core.findings.threshold import rethreshold

    return rethreshold(stored.findings, _display_threshold(stored), stored.categories)


def store_findings(
    scene: Any,
    volume: Any,
    findings: Any,
    mapping: PixelMapping,
    spec: Any,
    options: DisplayOptions,
) -> Any:
    """Create the volume's findings text node (complete findings JSON + how to show them)."""
    from MicrocalcAI.core.outputs.findings_json import findings_to_json

    node = scene.AddNewNodeByClass("vtkMRMLTextNode", f"MicrocalcAI findings - {volume.GetName()}")
    node.SetText(json.dumps(findings_to_json(findings), allow_nan=False))
    node.SetAttribute(ATTR_MAPPING, mapping.to_json())
    node.SetAttribute(ATTR_CATEGORIES, json.dumps(_categories_of(spec)))
    node.SetAttribute(ATTR_MODEL_THRESHOLD, repr(float(spec.score_threshold)))
    _tag_result_node(node, volume, ROLE_FINDINGS)
    _write_options(node, options, float(spec.score_threshold))
    subject_hierarchy_item(scene, node, results_folder(scene, volume))
    return node


def _write_options(node: Any, options: DisplayOptions, model_threshold: float) -> None:
    threshold = model_threshold if options.threshold is None else float(options.threshold)
    node.SetAttribute(ATTR_THRESHOLD, repr(threshold))
    node.SetAttribute(ATTR_SHOW_BENIGN, "true" if options.show_benign else "false")
    node.SetAttribute(ATTR_SHOW_MALIGNANT, "true" if options.show_malignant else "false")
    node.SetAttribute(ATTR_SEGMENTS_PER, options.segments_per)


def findings_node_of(scene: Any, volume: Any) -> Optional[Any]:
    nodes = result_nodes_of(scene, volume, (ROLE_FINDINGS,))
    return nodes[-1] if nodes else None


def load_stored(scene: Any, volume: Any) -> Optional[StoredFindings]:
    """Decode a volume's findings node (None when the volume has not been analysed)."""
    from MicrocalcAI.core.outputs.findings_json import findings_from_json

    node = findings_node_of(scene, volume)
    if node is None:
        return None
    findings = findings_from_json(json.loads(node.GetText()))
    mapping_text = node.GetAttribute(ATTR_MAPPING)
    mapping = PixelMapping.from_json(mapping_text) if mapping_text else PixelMapping.identity(findings.image_shape)
    categories = _decode_categories(node.GetAttribute(ATTR_CATEGORIES))
    model_threshold = float(node.GetAttribute(ATTR_MODEL_THRESHOLD) or findings.score_threshold)
    threshold_text = node.GetAttribute(ATTR_THRESHOLD)
    options = DisplayOptions(
        threshold=float(threshold_text) if threshold_text else None,
        show_benign=_to_bool(node.GetAttribute(ATTR_SHOW_BENIGN), True),
        show_malignant=_to_bool(node.GetAttribute(ATTR_SHOW_MALIGNANT), True),
        segments_per=node.GetAttribute(ATTR_SEGMENTS_PER) or "lesion",
    )
    return StoredFindings(findings, mapping, categories, model_threshold, options)


def shown_findings(scene: Any, volume: Any) -> Optional[Any]:
    """The volume's findings at its current display threshold (what the nodes show)."""
    stored = load_stored(scene, volume)
    if stored is None:
        return None
    return _shown(stored)


def analysed_volumes(scene: Any) -> list[Any]:
    """Volumes of the scene that have stored findings, in scene order."""
    out = []
    for node in _iter_nodes(scene, "vtkMRMLTextNode"):
        if node.GetAttribute(ATTR_ROLE) != ROLE_FINDINGS:
            continue
        volume = node.GetNodeReference(REF_SOURCE)
        if volume is not None and volume not in out:
            out.append(volume)
    return out


# ------------------------------------------------------------------------------ removal


def remove_results(scene: Any, volume: Any) -> int:
    """Remove every MicrocalcAI node and folder of a volume; returns how many nodes went."""
    nodes = result_nodes_of(scene, volume)
    for node in nodes:
        remove_node(scene, node)
    sh = _sh(scene)
    for folder in _folder_items(scene, volume):
        sh.RemoveItem(folder, False, True)
    if nodes:
        log.info("removed %d earlier MicrocalcAI node(s) of %s", len(nodes), volume.GetName())
    return len(nodes)


def _remove_display_nodes(scene: Any, volume: Any) -> None:
    for node in result_nodes_of(scene, volume, DISPLAY_ROLES):
        remove_node(scene, node)


# ------------------------------------------------------------------------------ ROIs


def _vtk_matrix(array: np.ndarray) -> Any:
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def create_lesion_roi(
    scene: Any, volume: Any, lesion: Any, geometry: RoiGeometry, folder: int, visible: bool = True
) -> Any:
    """One locked markups ROI for a lesion, coloured by class, descriptors attached."""
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", lesion_node_name(lesion))
    roi.CreateDefaultDisplayNodes()
    roi.SetROIType(roi.ROITypeBox)
    roi.SetAndObserveObjectToNodeMatrix(_vtk_matrix(geometry.object_to_node()))
    roi.SetSize(*[float(v) for v in geometry.size])
    roi.SetDescription(lesion_description(lesion))
    roi.SetAttribute("MicrocalcAI.LesionId", str(lesion.id))
    roi.SetAttribute("MicrocalcAI.Label", lesion.label)
    roi.SetAttribute("MicrocalcAI.Score", f"{lesion.score:.6f}")
    roi.SetAttribute("MicrocalcAI.PMalignant", f"{lesion.p_malignant:.6f}")
    roi.SetAttribute("MicrocalcAI.SpeckCount", str(lesion.speck_count))
    roi.SetAttribute("MicrocalcAI.AreaMm2", f"{lesion.area_mm2:.4f}")
    roi.SetAttribute("MicrocalcAI.BoxPx", json.dumps([round(float(v), 3) for v in lesion.box_px]))
    roi.SetAttribute("MicrocalcAI.BoxMm", json.dumps([round(float(v), 4) for v in lesion.box_mm]))
    _tag_result_node(roi, volume, ROLE_LESION)
    roi.SetLocked(True)
    display = roi.GetDisplayNode()
    if display is not None:
        colour = class_colour(lesion.label)
        display.SetSelectedColor(*colour)
        display.SetColor(*colour)
        display.SetFillOpacity(0.0)
        display.SetPropertiesLabelVisibility(True)
        display.SetHandlesInteractive(False)
        display.SetVisibility(bool(visible))
    subject_hierarchy_item(scene, roi, folder)
    return roi


# ------------------------------------------------------------------------------ segmentation


def ensure_segmentation_converters() -> None:
    """Register the labelmap <-> surface converter rules once (Slicer does it at start-up;
    the bare MRML library does not, and the segmentation display needs them)."""
    slicer = _slicer()
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    names = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for rule_class in (
        "vtkBinaryLabelmapToClosedSurfaceConversionRule",
        "vtkClosedSurfaceToBinaryLabelmapConversionRule",
    ):
        if rule_class not in names and hasattr(slicer, rule_class):
            factory.RegisterConverterRule(getattr(slicer, rule_class)())


def _oriented_labelmap(ijk_to_ras: np.ndarray, mask: np.ndarray, origin_ji: tuple[int, int]) -> Any:
    """A vtkOrientedImageData holding ``mask`` at plane index (j, i) of the volume grid."""
    import vtk
    from vtk.util import numpy_support

    slicer = _slicer()
    h, w = mask.shape
    j0, i0 = origin_ji
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(_vtk_matrix(ijk_to_ras))
    image.SetExtent(i0, i0 + max(w, 1) - 1, j0, j0 + max(h, 1) - 1, 0, 0)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    values[:] = 0
    if h and w:
        values[:] = np.ascontiguousarray(mask, dtype=np.uint8).ravel()
    image.Modified()
    return image


def _clip_mask(
    mask: np.ndarray, origin_ji: tuple[int, int], plane_shape: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int]]:
    """Cut a mask window to the volume plane (a window reaching past the edge is not an error)."""
    j0, i0 = origin_ji
    h, w = mask.shape
    rows, cols = plane_shape
    a, b = max(0, -j0), max(0, -i0)
    c, d = min(h, rows - j0), min(w, cols - i0)
    if c <= a or d <= b:
        return np.zeros((0, 0), dtype=bool), (max(j0, 0), max(i0, 0))
    return mask[a:c, b:d], (j0 + a, i0 + b)


def lesion_plane_mask(lesion: Any, mapping: PixelMapping) -> tuple[np.ndarray, tuple[int, int]]:
    """A lesion's speck mask on the volume plane: (bool mask, (j, i) of its first pixel)."""
    mask = np.asarray(lesion.speck_mask, dtype=bool)
    if mask.size == 0:
        i0, j0, _, _ = mapping.box_to_ijk_bounds(lesion.box_px)
        return np.zeros((0, 0), dtype=bool), (int(np.ceil(j0)), int(np.ceil(i0)))
    plane_mask, origin = mapping.mask_to_plane(mask, lesion.mask_origin)
    return _clip_mask(plane_mask, origin, mapping.plane_shape)


def _union_mask(parts: Sequence[tuple[np.ndarray, tuple[int, int]]]) -> tuple[np.ndarray, tuple[int, int]]:
    parts = [(m, o) for m, o in parts if m.size]
    if not parts:
        return np.zeros((0, 0), dtype=bool), (0, 0)
    j0 = min(o[0] for _, o in parts)
    i0 = min(o[1] for _, o in parts)
    j1 = max(o[0] + m.shape[0] for m, o in parts)
    i1 = max(o[1] + m.shape[1] for m, o in parts)
    out = np.zeros((j1 - j0, i1 - i0), dtype=bool)
    for m, (j, i) in parts:
        out[j - j0 : j - j0 + m.shape[0], i - i0 : i - i0 + m.shape[1]] |= m
    return out, (j0, i0)


def create_speck_segmentation(
    scene: Any,
    volume: Any,
    lesions: Sequence[Any],
    mapping: PixelMapping,
    folder: int,
    segments_per: str = "lesion",
    visible_labels: Sequence[str] = ("benign", "malignant"),
) -> Any:
    """One segmentation node with the specks, segments per lesion or per class.

    Each segment's labelmap covers only its window (not the whole mammogram), in the
    volume's exact geometry (spacing, origin, directions), which keeps memory small for
    4000 x 3000 images and voxels aligned with the image.
    """
    if segments_per not in SEGMENTS_PER:
        raise ValueError(f"segments_per must be one of {SEGMENTS_PER}, got {segments_per!r}")
    ensure_segmentation_converters()
    ijk_to_ras = ijk_to_ras_matrix(volume)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"MicrocalcAI specks - {volume.GetName()}")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    _tag_result_node(seg, volume, ROLE_SPECKS)
    seg.SetAttribute(ATTR_SEGMENTS_PER, segments_per)
    display = seg.GetDisplayNode()

    groups: list[tuple[str, str, list[Any]]] = []
    if segments_per == "lesion":
        groups = [(f"L{les.id} {les.label} specks", les.label, [les]) for les in lesions]
    else:
        for label in ("malignant", "benign"):
            members = [les for les in lesions if les.label == label]
            if members:
                groups.append((f"{label} specks", label, members))

    for name, label, members in groups:
        mask, origin = _union_mask([lesion_plane_mask(les, mapping) for les in members])
        image = _oriented_labelmap(ijk_to_ras, mask, origin)
        segment_id = seg.AddSegmentFromBinaryLabelmapRepresentation(image, name, list(class_colour(label)))
        segment = seg.GetSegmentation().GetSegment(segment_id)
        segment.SetTag("MicrocalcAI.Label", label)
        segment.SetTag("MicrocalcAI.LesionIds", ",".join(str(les.id) for les in members))
        if display is not None:
            display.SetSegmentVisibility(segment_id, label in visible_labels)
    if display is not None:
        display.SetOpacity2DFill(0.7)
        display.SetOpacity2DOutline(1.0)
    subject_hierarchy_item(scene, seg, folder)
    return seg


# ------------------------------------------------------------------------------ table


def create_lesion_table(scene: Any, volume: Any, findings: Any, rois: Sequence[Any], folder: int) -> Any:
    """The lesion list as a table node; the RAS columns are the ROI centres in world space."""
    import vtk

    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", f"MicrocalcAI lesions - {volume.GetName()}")
    _tag_result_node(table_node, volume, ROLE_TABLE)
    rows: list[list[Any]] = []
    for lesion, roi in zip(findings.lesions, rois):
        centre = [0.0, 0.0, 0.0]
        roi.GetCenterWorld(centre)
        x0, y0, x1, y1 = (float(v) for v in lesion.box_px)
        mx0, my0, mx1, my1 = (float(v) for v in lesion.box_mm)
        rows.append([
            f"L{lesion.id}", lesion.label, float(lesion.score), float(lesion.p_malignant), int(lesion.speck_count),
            mx1 - mx0, my1 - my0, float(lesion.area_mm2), x0, y0, x1, y1, *map(float, centre),
        ])  # fmt: skip
    table = table_node.GetTable()
    for index, (name, kind, description) in enumerate(TABLE_COLUMNS):
        array = {"string": vtk.vtkStringArray, "double": vtk.vtkDoubleArray, "int": vtk.vtkIntArray}[kind]()
        array.SetName(name)
        array.SetNumberOfValues(len(rows))
        for r, row in enumerate(rows):
            array.SetValue(r, row[index])
        table.AddColumn(array)
        table_node.SetColumnDescription(name, description)
    table_node.SetLocked(True)
    table_node.SetAttribute("MicrocalcAI.ImageRisk", f"{findings.risk.probability:.6f}")
    table_node.SetAttribute("MicrocalcAI.ImageRiskCategory", findings.risk.category)
    table_node.SetAttribute("MicrocalcAI.ScoreThreshold", f"{findings.score_threshold:.6f}")
    if findings.ood is not None:  # the out-of-distribution check, when the model has one
        table_node.SetAttribute("MicrocalcAI.OodScore", f"{findings.ood.score:.6f}")
        table_node.SetAttribute("MicrocalcAI.OodThreshold", f"{findings.ood.threshold:.6f}")
        table_node.SetAttribute("MicrocalcAI.OodFlagged", "true" if findings.ood.flagged else "false")
    table_node.Modified()
    subject_hierarchy_item(scene, table_node, folder)
    return table_node


# ------------------------------------------------------------------------------ the whole set


def _visible_labels(options: DisplayOptions) -> tuple[str, ...]:
    return tuple(label for label, on in (("benign", options.show_benign), ("malignant", options.show_malignant)) if on)


def update_display(scene: Any, volume: Any, options: Optional[DisplayOptions] = None) -> ResultNodes:
    """(Re)build the ROIs, segmentation and table of a volume from its stored findings.

    Called after an analysis and whenever the threshold, the class filter or the segment
    grouping changes: the model is not run again, the previous display nodes of the volume
    are replaced (never duplicated). ``options=None`` keeps the stored options.
    """
    stored = load_stored(scene, volume)
    if stored is None:
        raise LookupError(f"'{volume.GetName()}' has no MicrocalcAI findings; run the analysis first")
    options = options or stored.options
    if options.segments_per not in SEGMENTS_PER:
        raise ValueError(f"segments_per must be one of {SEGMENTS_PER}, got {options.segments_per!r}")
    node = findings_node_of(scene, volume)
    _write_options(node, options, stored.model_threshold)
    shown = _shown(replace(stored, options=options))

    scene.StartState(scene.BatchProcessState)
    try:
        _remove_display_nodes(scene, volume)
        folder = results_folder(scene, volume)
        ijk_to_ras = ijk_to_ras_matrix(volume)
        visible = _visible_labels(options)
        rois = [
            create_lesion_roi(
                scene,
                volume,
                les,
                roi_geometry_for_box(ijk_to_ras, stored.mapping, les.box_px),
                folder,
                les.label in visible,
            )
            for les in shown.lesions
        ]
        segmentation = create_speck_segmentation(
            scene, volume, shown.lesions, stored.mapping, folder, options.segments_per, visible
        )
        table = create_lesion_table(scene, volume, shown, rois, folder)
    finally:
        scene.EndState(scene.BatchProcessState)
    return ResultNodes(
        volume=volume, folder_item=folder, findings_node=node, rois=rois, segmentation=segmentation, table=table
    )


def set_class_visibility(scene: Any, volume: Any, show_benign: bool, show_malignant: bool) -> None:
    """Show or hide benign and malignant lesions (ROIs and segments) without rebuilding."""
    node = findings_node_of(scene, volume)
    if node is not None:
        node.SetAttribute(ATTR_SHOW_BENIGN, "true" if show_benign else "false")
        node.SetAttribute(ATTR_SHOW_MALIGNANT, "true" if show_malignant else "false")
    visible = {"benign": show_benign, "malignant": show_malignant}
    for roi in result_nodes_of(scene, volume, (ROLE_LESION,)):
        display = roi.GetDisplayNode()
        if display is not None:
            display.SetVisibility(bool(visible.get(roi.GetAttribute("MicrocalcAI.Label") or "", True)))
    for seg in result_nodes_of(scene, volume, (ROLE_SPECKS,)):
        display = seg.GetDisplayNode()
        segmentation = seg.GetSegmentation()
        if display is None:
            continue
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            label = _segment_label(segmentation.GetSegment(segment_id))
            display.SetSegmentVisibility(segment_id, bool(visible.get(label, True)))


def _segment_label(segment: Any) -> str:
    """The class a MicrocalcAI segment shows ("" for segments made by others)."""
    import vtk

    text = vtk.reference("")
    return str(text) if segment.GetTag("MicrocalcAI.Label", text) else ""


def write_results(
    scene: Any,
    volume: Any,
    findings: Any,
    mapping: PixelMapping,
    spec: Any,
    options: Optional[DisplayOptions] = None,
) -> ResultNodes:
    """Replace a volume's previous results with these findings and show them.

    ``findings`` are the engine's output at the analysis threshold (all lesions it found);
    ``spec`` is the model's ModelSpec (risk categories and default threshold).
    """
    options = options or DisplayOptions()
    remove_results(scene, volume)
    store_findings(scene, volume, findings, mapping, spec, options)
    return update_display(scene, volume, options)


def current_result_nodes(scene: Any, volume: Any) -> Optional[ResultNodes]:
    """The nodes currently showing a volume's findings (None when not analysed)."""
    node = findings_node_of(scene, volume)
    if node is None:
        return None
    segs = result_nodes_of(scene, volume, (ROLE_SPECKS,))
    tables = result_nodes_of(scene, volume, (ROLE_TABLE,))
    rois = sorted(
        result_nodes_of(scene, volume, (ROLE_LESION,)), key=lambda n: int(n.GetAttribute("MicrocalcAI.LesionId") or 0)
    )
    return ResultNodes(
        volume=volume,
        folder_item=results_folder(scene, volume, create=False),
        findings_node=node,
        rois=rois,
        segmentation=segs[-1] if segs else None,
        table=tables[-1] if tables else None,
    )


# ------------------------------------------------------------------------------ risks


@dataclass
class SceneRisks:
    """Image, breast and exam risk of one volume, combined with the other analysed views."""

    image: Any  # ImageFindings as shown (filtered)
    breast: Any  # BreastFindings containing this image
    exam: Any  # ExamFindings containing that breast
    images: list[Any] = field(default_factory=list)  # all analysed images of the scene, as shown
    breasts: list[Any] = field(default_factory=list)
    exams: list[Any] = field(default_factory=list)


def combined_risks(scene: Any, volumes: Sequence[Any]) -> tuple[list[Any], list[Any], list[Any]]:
    """(images as shown, breasts, exams) over the given analysed volumes.

    Image names are made unique (volume ID appended on a clash) because output files and
    the breast tables are keyed by name.
    """
    from MicrocalcAI.core.findings.risk import breast_findings, exam_findings

    images: list[Any] = []
    categories: list[Any] = []
    names: set[str] = set()
    for volume in volumes:
        stored = load_stored(scene, volume)
        if stored is None:
            continue
        image = _shown(stored)
        if image.name in names:
            image = replace(image, name=f"{image.name}_{re.sub(r'[^A-Za-z0-9]+', '', volume.GetID())}")
        names.add(image.name)
        images.append(image)
        categories = categories or stored.categories
    if not images:
        return [], [], []
    breasts = breast_findings(images, categories)
    return images, breasts, exam_findings(breasts, categories)


def scene_risks(scene: Any, volume: Any) -> Optional[SceneRisks]:
    """Risks for the panel: the volume's image, its breast (CC + MLO of the same side and
    study among the analysed volumes) and its exam. None when the volume is not analysed."""
    from MicrocalcAI.core.findings.risk import breast_key

    volumes = analysed_volumes(scene)
    if volume not in volumes:
        return None
    images, breasts, exams = combined_risks(scene, volumes)
    me = volumes.index(volume)
    keys: list[Any] = []
    for index, image in enumerate(images):
        key = breast_key(image, index)
        if key not in keys:
            keys.append(key)
    breast = breasts[keys.index(breast_key(images[me], me))]
    exam = next((e for e in exams if any(b is breast for b in e.breasts)), exams[0])
    return SceneRisks(image=images[me], breast=breast, exam=exam, images=images, breasts=breasts, exams=exams)


def risk_warnings(risks: SceneRisks) -> list[str]:
    """What the risk panel must say about confidence, one sentence each (empty when all is
    well): the image is unlike the training data, or its breast or exam rests on such an image.
    """
    out: list[str] = []
    ood = risks.image.ood
    if ood is not None and ood.flagged:
        why = f": {'; '.join(ood.reasons)}" if ood.reasons else ""
        out.append(
            f"This image is unlike the model's training data (out-of-distribution score {ood.score:.2f}, "
            f"flagged from {ood.threshold:.2f}){why}. Its risk is indeterminate; the probability is shown "
            "but the model cannot vouch for it."
        )
    for level, group in (("breast", risks.breast), ("exam", risks.exam)):
        others = [n for n in group.indeterminate_images if n != risks.image.name]
        if group.risk.category == "indeterminate" and others:
            out.append(f"The {level} risk is indeterminate: it rests on {', '.join(others)}, unlike the training data.")
        elif group.indeterminate_images and group.risk.category != "indeterminate":
            out.append(
                f"The {level} risk ({group.risk.category}) is decided by its readable views; "
                f"{', '.join(group.indeterminate_images)} could not be assessed."
            )
    return out
