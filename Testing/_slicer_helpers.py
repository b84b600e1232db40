"""Builders for the MRML tests: real scenes, volumes and findings with known geometry.

The tests run on the real MRML library of the ``slicer-core`` wheel (``import slicer``
gives ``vtkMRMLScene``, markups, segmentations, tables and the subject hierarchy, but no
``slicer.app`` or ``slicer.mrmlScene``), so every builder takes the scene explicitly.
Independent reference computations (:func:`box_corners_ras`) use only numpy and the
volume's matrix, never the code under test.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODULE_DIR = REPO / "MicrocalcAIModule"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from _findings_helpers import model_spec  # noqa: E402

from MicrocalcAI.core.detect.manifest import ModelSpec  # noqa: E402
from MicrocalcAI.core.records import ImageFindings, Lesion, ModelInfo, OodCheck, Speck  # noqa: E402


def new_scene() -> Any:
    """An empty MRML scene (with its subject hierarchy node)."""
    import slicer

    scene = slicer.vtkMRMLScene()
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    return scene


def rotation(axis: Sequence[float], degrees: float) -> np.ndarray:
    """3x3 rotation matrix (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = np.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def add_volume(
    scene: Any,
    pixels: np.ndarray,
    *,
    spacing: Sequence[float] = (0.1, 0.1, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    directions: Optional[np.ndarray] = None,
    name: str = "mammo",
    attributes: Optional[dict[str, str]] = None,
) -> Any:
    """A scalar volume whose single slice is ``pixels`` (rows = j, columns = i)."""
    import vtk
    from vtk.util import numpy_support

    arr = np.ascontiguousarray(pixels)
    rows, cols = arr.shape
    image = vtk.vtkImageData()
    image.SetDimensions(cols, rows, 1)
    vtk_type = numpy_support.get_vtk_array_type(arr.dtype)
    image.AllocateScalars(vtk_type, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = arr.ravel()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    volume.SetAndObserveImageData(image)
    volume.SetSpacing(*[float(s) for s in spacing])
    volume.SetOrigin(*[float(o) for o in origin])
    d = np.eye(3) if directions is None else np.asarray(directions, dtype=np.float64)
    m = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            m.SetElement(r, c, float(d[r, c]))
    volume.SetIJKToRASDirectionMatrix(m)
    for key, value in (attributes or {}).items():
        volume.SetAttribute(key, value)
    return volume


def put_under_study(scene: Any, volume: Any, patient: str = "P1", study: str = "S1") -> tuple[int, int]:
    """Create patient/study items and move the volume's item under the study: (patient, study)."""
    import slicer

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient_item = sh.CreateSubjectItem(sh.GetSceneItemID(), patient)
    study_item = sh.CreateStudyItem(patient_item, study)
    item = sh.GetItemByDataNode(volume) or sh.CreateItem(study_item, volume)
    sh.SetItemParent(item, study_item)
    return patient_item, study_item


def ijk_to_ras(volume: Any) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def box_corners_ras(matrix: np.ndarray, ijk_bounds: Sequence[float], k: float = 0.0) -> np.ndarray:
    """(8, 3) RAS corners of IJK bounds (i0, j0, i1, j1) x [k-0.5, k+0.5]: the reference."""
    i0, j0, i1, j1 = ijk_bounds
    pts = np.array([[i, j, kk, 1.0] for i in (i0, i1) for j in (j0, j1) for kk in (k - 0.5, k + 0.5)])
    return (matrix @ pts.T).T[:, :3]


def roi_corners_world(roi: Any) -> np.ndarray:
    """(8, 3) world corners of a markups ROI, from its own API (centre, axes, size)."""
    centre = [0.0, 0.0, 0.0]
    roi.GetCenterWorld(centre)
    axes = []
    for getter in (roi.GetXAxisWorld, roi.GetYAxisWorld, roi.GetZAxisWorld):
        a = [0.0, 0.0, 0.0]
        getter(a)
        axes.append(np.array(a))
    size = np.array(roi.GetSize())
    out = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            for sz in (-1, 1):
                out.append(
                    np.array(centre)
                    + sx * axes[0] * size[0] / 2
                    + sy * axes[1] * size[1] / 2
                    + sz * axes[2] * size[2] / 2
                )
    return np.array(out)


def same_point_set(a: np.ndarray, b: np.ndarray, atol: float = 1e-6) -> bool:
    """Whether two (N, 3) point sets are equal up to order."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        return False
    used = np.zeros(len(b), dtype=bool)
    for p in a:
        d = np.linalg.norm(b - p, axis=1)
        d[used] = np.inf
        k = int(np.argmin(d))
        if d[k] > atol:
            return False
        used[k] = True
    return True


def spec(categories: Optional[list[tuple[str, float]]] = None, score_threshold: float = 0.3) -> ModelSpec:
    """The model entry of the Slicer tests: :func:`_findings_helpers.model_spec`."""
    return model_spec(categories, score_threshold)


def make_lesion(
    id: int,
    label: str,
    score: float,
    p_malignant: float,
    box: tuple[float, float, float, float],
    mask_pixels: Sequence[tuple[int, int]] = (),
    spacing: tuple[float, float] = (0.1, 0.1),
) -> Lesion:
    """A lesion with a speck mask window = the integer pixels of its box, ``mask_pixels``
    (row, col in stored coordinates) set."""
    r0, c0 = int(np.floor(box[1])), int(np.floor(box[0]))
    r1, c1 = int(np.ceil(box[3])), int(np.ceil(box[2]))
    mask = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    for r, c in mask_pixels:
        mask[r - r0, c - c0] = True
    box_mm = (box[0] * spacing[1], box[1] * spacing[0], box[2] * spacing[1], box[3] * spacing[0])
    specks = [
        Speck(centroid_px=(c + 0.5, r + 0.5), area_px=1, area_mm2=spacing[0] * spacing[1], diameter_mm=0.1)
        for r, c in mask_pixels
    ]
    return Lesion(
        id=id, label=label, score=score, p_malignant=p_malignant, box_px=tuple(map(float, box)), box_mm=box_mm,
        area_mm2=(box_mm[2] - box_mm[0]) * (box_mm[3] - box_mm[1]), speck_mask=mask, mask_origin=(r0, c0), specks=specks,
    )  # fmt: skip


def make_findings(
    lesions: Sequence[Lesion],
    shape: tuple[int, int],
    *,
    name: str = "img",
    threshold: float = 0.1,
    spacing: tuple[float, float] = (0.1, 0.1),
    laterality: Optional[str] = "R",
    view: Optional[str] = "CC",
    patient_id: Optional[str] = "P1",
    study_uid: Optional[str] = "1.2.3",
    model_spec: Optional[ModelSpec] = None,
    ood: Optional[OodCheck] = None,
) -> ImageFindings:
    from MicrocalcAI.core.findings.risk import image_risk

    s = model_spec or spec()
    risk = image_risk(lesions, s.risk_categories, ood)
    return ImageFindings(
        source=None, name=name, image_shape=shape, spacing_mm=spacing, spacing_source="user", photometric="MONOCHROME2",
        laterality=laterality, laterality_source="user", view=view, view_source="user", presentation_intent=None,
        patient_id=patient_id, study_uid=study_uid, series_uid=None, sop_uid=None, manufacturer=None,
        lesions=list(lesions), risk=risk,
        model=ModelInfo(s.name, s.version, s.sha256, s.backbone, s.spacing_mm), score_threshold=threshold, ood=ood,
    )  # fmt: skip


def standard_lesions() -> list[Lesion]:
    """Three lesions of known boxes and masks on a 120 x 90 image, decreasing P(malignant)."""
    return [
        make_lesion(1, "malignant", 0.92, 0.87, (10.0, 20.0, 30.0, 35.0), [(22, 12), (22, 13), (30, 25), (34, 29)]),
        make_lesion(2, "benign", 0.55, 0.40, (50.0, 60.0, 58.0, 70.0), [(61, 51), (69, 57)]),
        make_lesion(3, "malignant", 0.20, 0.30, (70.0, 5.0, 80.5, 12.5), [(5, 70), (6, 71), (11, 80), (12, 80)]),
    ]


def segment_voxels(segmentation_node: Any, segment_id: str) -> set[tuple[int, int, int]]:
    """IJK (i, j, k) of the non-zero voxels of a segment, in its own image's index space."""
    from vtk.util import numpy_support

    rep = segmentation_node.GetSegmentation().GetSegment(segment_id).GetRepresentation("Binary labelmap")
    ext = rep.GetExtent()
    dims = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    values = numpy_support.vtk_to_numpy(rep.GetPointData().GetScalars()).reshape(dims)
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    ks, js, is_ = np.nonzero(values == label)
    return {(int(i + ext[0]), int(j + ext[2]), int(k + ext[4])) for i, j, k in zip(is_, js, ks)}


def segment_image_to_world(segmentation_node: Any, segment_id: str) -> np.ndarray:
    import vtk

    rep = segmentation_node.GetSegmentation().GetSegment(segment_id).GetRepresentation("Binary labelmap")
    m = vtk.vtkMatrix4x4()
    rep.GetImageToWorldMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def table_rows(table_node: Any) -> list[dict[str, Any]]:
    """The table as a list of {column name: value} rows."""
    table = table_node.GetTable()
    names = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        rows.append(
            {
                names[c]: table.GetValue(r, c).ToString()
                if table.GetColumn(c).IsA("vtkStringArray")
                else table.GetValue(r, c).ToDouble()
                for c in range(len(names))
            }
        )
    return rows


def nodes_of_class(scene: Any, class_name: str) -> list[Any]:
    nodes = scene.GetNodesByClass(class_name)
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def write_random_model(folder: Path, score_threshold: float = 0.3) -> Path:
    """A random-weights mobilenet_v2 model with its manifest (real path, meaningless output)."""
    import torch

    from MicrocalcAI.core.detect.network import build_detector
    from MicrocalcAI.core.detect.weights import save_weights

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model, config = build_detector("mobilenet_v2")
    sha = save_weights(model, folder / "r.safetensors", config)
    entry = ModelSpec(
        name="random",
        version="0",
        file="r.safetensors",
        sha256=sha,
        backbone="mobilenet_v2",
        score_threshold=score_threshold,
    )
    (folder / "manifest.json").write_text(
        json.dumps({"schema_version": 1, "default": "random", "models": [entry.to_json()]})
    )
    return folder / "manifest.json"
