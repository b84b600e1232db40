"""MicrocalcAI: breast microcalcification lesions, benign/malignant, and cancer risk, in 3D Slicer.

This file is the thin Slicer layer: module description, the parameter node, the module widget
(which hosts the panel, ``MicrocalcAIModuleLib/widget.py``), a scriptable Logic and the
self-test. Everything that computes or writes MRML lives in
``MicrocalcAIModuleLib`` (tested on the real MRML library without the application) and in
the engine package ``MicrocalcAI`` (no Slicer code at all).

Console use (see docs/slicer.md)::

    logic = slicer.util.getModuleLogic("MicrocalcAIModule")
    result = logic.process(slicer.util.getNode("1: MG image"), device="auto")
    print(result.findings.risk.probability, [roi.GetName() for roi in result.nodes.rois])
"""

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from MicrocalcAIModuleLib import paths as _paths

_paths.ensure_engine_importable()  # sys.path only: nothing is installed or imported here

from MicrocalcAIModuleLib import dependencies, models, runner  # noqa: E402
from MicrocalcAIModuleLib import scene as scene_lib  # noqa: E402
from MicrocalcAIModuleLib.geometry import RoiGeometry, view_field_of_view  # noqa: E402
from MicrocalcAIModuleLib.scene import DisplayOptions  # noqa: E402
from MicrocalcAIModuleLib.volumes import dicom_source_from_database, mammogram_volumes  # noqa: E402
from MicrocalcAIModuleLib.widget import OPERATING_POINT_DEFAULT, MicrocalcAIPanel  # noqa: E402
from MicrocalcAIModuleLib.widget import tr as _  # noqa: E402

log = logging.getLogger("MicrocalcAI")


#
# Module
#


class MicrocalcAIModule(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MicrocalcAI"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MicrocalcAI contributors"]
        self.parent.helpText = _(
            "Finds suspicious breast microcalcification lesions on 2-D mammograms, classifies each as benign "
            "or malignant (Faster R-CNN + FPN, after Lin et al., Fundamental Research 2023, "
            "doi:10.1016/j.fmre.2023.04.018), segments the calcification specks and estimates the cancer risk "
            "per image, breast and exam.<br>Select a mammogram (or all of them), press <b>Apply</b>; click a lesion "
            "in the table to centre the views on it. Changing the threshold or the shown classes does not re-run "
            "the model.<br><b>Research use only, not for clinical use.</b> See the "
            '<a href="https://github.com/MicrocalcAI/SlicerMicrocalcAI/blob/main/docs/slicer.md">user guide</a>.'
        )
        self.parent.acknowledgementText = _(
            "Method: Lin et al., Artificial intelligence-based diagnosis of breast cancer by mammography "
            "microcalcification, Fundamental Research (2023). Demo images from CBIS-DDSM (CC BY 3.0)."
        )
        icon = _paths.resource_path("Icons/MicrocalcAIModule.png")
        if icon.is_file():
            self.parent.icon = qt.QIcon(str(icon))


#
# Parameter node
#


@parameterNodeWrapper
class MicrocalcAIModuleParameterNode:
    """The panel's choices, saved with the scene."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    allVolumes: bool = False
    modelReference: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "gpu"])] = "auto"
    operatingPoint: str = OPERATING_POINT_DEFAULT
    scoreThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.3
    showBenign: bool = True
    showMalignant: bool = True
    segmentsPer: Annotated[str, Choice(["lesion", "class"])] = "lesion"


#
# Widget
#


class MicrocalcAIModuleWidget(ScriptedLoadableModuleWidget):
    """Slicer's module widget; the panel itself is :class:`MicrocalcAIModuleLib.widget.MicrocalcAIPanel`."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.panel: Optional[MicrocalcAIPanel] = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.panel = MicrocalcAIPanel(self.layout, MicrocalcAIModuleLogic(), lambda: self.parent.isEntered)
        self.panel.setup()
        self.logic, self.ui = self.panel.logic, self.panel.ui  # for console users of widget.logic / .ui

    def cleanup(self) -> None:
        if self.panel is not None:
            self.panel.cleanup()

    def enter(self) -> None:
        if self.panel is not None:
            self.panel.enter()

    def exit(self) -> None:
        if self.panel is not None:
            self.panel.exit()


#
# Logic
#


class MicrocalcAIModuleLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, callable from the Python console or scripts.

    No dialogs unless ``interactive=True`` (only dependency installation may ask); errors
    are raised as MicrocalcAIError / VolumeError / DependencyError with clear messages.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._analyzer = None
        self._analyzerKey: Optional[tuple] = None
        self.canceller = runner.Canceller()

    def getParameterNode(self) -> MicrocalcAIModuleParameterNode:
        return MicrocalcAIModuleParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ set-up
    @staticmethod
    def userModelsDirectory() -> Path:
        """Where imported models are kept (next to Slicer's user settings, per user)."""
        return Path(slicer.app.slicerUserSettingsFilePath).parent / "MicrocalcAI" / "Models"

    def setupDependencies(self, interactive: bool = False) -> None:
        """Install torch/torchvision (PyTorch extension) and the other packages if missing."""
        dependencies.ensure_dependencies(
            _paths.requirements_path(), interactive=interactive,
            confirm=(lambda message: slicer.util.confirmOkCancelDisplay(message, "MicrocalcAI")) if interactive else None,
        )  # fmt: skip

    def analyzer(self, model: Optional[str] = None, device: str = "auto") -> Any:
        """A loaded (checksum-verified) model, kept between runs of the same model/device."""
        from MicrocalcAI.core.pipeline import Analyzer

        key = (model or "", device or "auto")
        if self._analyzer is None or self._analyzerKey != key:
            self._analyzer = None
            self._analyzer = Analyzer(model or None, device or "auto")
            self._analyzerKey = key
        return self._analyzer

    def importModel(self, path: str, manifest: Optional[str] = None) -> models.ModelChoice:
        """Import a user's weights (checked against their manifest entry) for later sessions."""
        return models.import_model(path, self.userModelsDirectory(), manifest=manifest)

    def cancel(self) -> None:
        """Ask the running analysis to stop at its next step."""
        self.canceller.cancel()

    @staticmethod
    def dicomSource(volumeNode: Any) -> Any:
        """Where a volume came from in Slicer's DICOM database (None for plain files)."""
        database = getattr(slicer, "dicomDatabase", None)
        return dicom_source_from_database(volumeNode, database) if database is not None else None

    # ------------------------------------------------------------------ analysis
    def process(
        self,
        volumeNode: Any,
        model: Optional[str] = None,
        device: str = "auto",
        scoreThreshold: Optional[float] = None,
        showBenign: bool = True,
        showMalignant: bool = True,
        segmentsPer: str = "lesion",
        spacingMm: Optional[float] = None,
        laterality: Optional[str] = None,
        view: Optional[str] = None,
        progress: Optional[Callable[[float, str], None]] = None,
        interactive: bool = False,
    ) -> runner.VolumeResult:
        """Analyse one mammogram volume and show its findings in the scene.

        Returns a VolumeResult: ``.findings`` (engine ImageFindings at ``scoreThreshold``,
        default the model's), ``.nodes`` (``.rois``, ``.segmentation``, ``.table``,
        ``.findings_node``, ``.folder_item``). Earlier results of this volume are replaced.
        ``spacingMm``/``laterality``/``view`` override what the image says.
        """
        self.setupDependencies(interactive=interactive)
        analyzer = self.analyzer(model, device)
        self.canceller.reset()
        options = DisplayOptions(
            threshold=scoreThreshold, show_benign=showBenign, show_malignant=showMalignant, segments_per=segmentsPer
        )
        return runner.analyse_volume(
            slicer.mrmlScene, volumeNode, analyzer, dicom=self.dicomSource(volumeNode), options=options,
            spacing_mm=spacingMm, laterality=laterality, view=view, progress=progress, canceller=self.canceller,
        )  # fmt: skip

    def processVolumes(
        self,
        volumeNodes: Optional[Sequence[Any]] = None,
        model: Optional[str] = None,
        device: str = "auto",
        options: Optional[DisplayOptions] = None,
        progress: Optional[Callable[[float, str], None]] = None,
        interactive: bool = False,
    ) -> runner.SceneRunResult:
        """Analyse several volumes (default: every 2-D mammogram of the scene); one failure
        does not stop the others (see ``.failed``)."""
        self.setupDependencies(interactive=interactive)
        analyzer = self.analyzer(model, device)
        self.canceller.reset()
        volumes = list(volumeNodes) if volumeNodes is not None else mammogram_volumes(slicer.mrmlScene)
        return runner.analyse_volumes(
            slicer.mrmlScene, volumes, analyzer, dicom_lookup=self.dicomSource, options=options,
            progress=progress, canceller=self.canceller,
        )  # fmt: skip

    def runBatch(
        self,
        inputs: Sequence[str],
        outputFolder: str,
        model: Optional[str] = None,
        device: str = "auto",
        scoreThreshold: Optional[float] = None,
        force: bool = False,
        spacingMm: Optional[float] = None,
        progress: Optional[Callable[[float, str], None]] = None,
    ) -> Any:
        """Analyse files and folders (DICOM folders too) into ``outputFolder`` without loading
        them into the scene: per-image JSON + overlay PNG, images/breasts/exams CSV. Finished
        images are skipped unless ``force``. Returns the engine's BatchResult."""
        self.setupDependencies(interactive=False)
        analyzer = self.analyzer(model, device)
        self.canceller.reset()
        return runner.run_file_batch(
            inputs,
            outputFolder,
            analyzer,
            force=force,
            spacing_mm=spacingMm,
            score_threshold=analyzer.spec.score_threshold if scoreThreshold is None else float(scoreThreshold),
            progress=progress,
            canceller=self.canceller,
        )

    # ------------------------------------------------------------------ display and export
    def updateDisplay(self, volumeNode: Any, options: Optional[DisplayOptions] = None) -> scene_lib.ResultNodes:
        """Re-show a volume's findings at another threshold/grouping without re-running."""
        return scene_lib.update_display(slicer.mrmlScene, volumeNode, options)

    def setThreshold(self, volumeNode: Any, scoreThreshold: float) -> scene_lib.ResultNodes:
        """Console shortcut: change only the threshold of an analysed volume."""
        stored = scene_lib.load_stored(slicer.mrmlScene, volumeNode)
        if stored is None:
            raise LookupError(f"'{volumeNode.GetName()}' has not been analysed")
        options = stored.options
        options.threshold = float(scoreThreshold)
        return scene_lib.update_display(slicer.mrmlScene, volumeNode, options)

    def risks(self, volumeNode: Any) -> Optional[scene_lib.SceneRisks]:
        """Image, breast and exam risk of an analysed volume, as currently shown."""
        return scene_lib.scene_risks(slicer.mrmlScene, volumeNode)

    def exportResults(self, volumeNodes: Sequence[Any], folder: str) -> list[Path]:
        """Write JSON (per image) and CSV (images, breasts, exams) of the shown findings."""
        return runner.export_results(slicer.mrmlScene, volumeNodes, folder)

    def exportDicom(self, volumeNodes: Sequence[Any], folder: str) -> list[Path]:
        """CAD SR, TID 1500 SR, presentation state and SEG of the shown findings (engine writer)."""
        return runner.export_dicom(slicer.mrmlScene, volumeNodes, folder, self.dicomSource)

    @staticmethod
    def jumpToLesion(roiNode: Any) -> None:
        """Centre all slice views on a lesion and zoom so that it fills part of the view."""
        centre = [0.0, 0.0, 0.0]
        roiNode.GetCenterWorld(centre)
        slicer.modules.markups.logic().JumpSlicesToLocation(centre[0], centre[1], centre[2], True)
        fov = view_field_of_view(RoiGeometry(np.array(centre), np.array(roiNode.GetSize()), np.eye(3)))
        for sliceNode in slicer.util.getNodesByClass("vtkMRMLSliceNode"):
            current = sliceNode.GetFieldOfView()
            aspect = current[1] / current[0] if current[0] else 1.0
            sliceNode.SetFieldOfView(fov, fov * aspect, current[2])


#
# Test
#


class MicrocalcAIModuleTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: no download. Uses the bundled simulated mammogram with three
    known clusters (Resources/Samples) and, for the geometry, a synthetic DICOM-like volume."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_GeometryAndReplacement()
        self.setUp()
        self.test_SampleMammogram()

    # -- no model needed: what the scene shows must match the findings exactly
    def test_GeometryAndReplacement(self) -> None:
        from MicrocalcAI.core.detect.manifest import ModelSpec
        from MicrocalcAI.core.records import ImageFindings, Lesion, ModelInfo, Risk
        from MicrocalcAIModuleLib.geometry import PixelMapping

        self.delayDisplay("Geometry of boxes, specks and table on an LPS volume")
        volume = slicer.util.addVolumeFromArray(np.zeros((1, 100, 80), dtype=np.int16), name="geometry test")
        volume.SetSpacing(0.07, 0.05, 1.0)
        volume.SetOrigin(-3.0, 12.0, 4.0)
        volume.SetIJKToRASDirections(-1, 0, 0, 0, -1, 0, 0, 0, 1)  # Slicer's DICOM loader on a mammogram
        mask = np.zeros((10, 8), dtype=bool)
        mask[2, 3] = mask[7, 6] = True
        lesion = Lesion(
            id=1, box_px=(20.0, 30.0, 28.0, 40.0), box_mm=(1.4, 1.5, 1.96, 2.0), label="malignant", score=0.9,
            p_malignant=0.8, area_mm2=0.28, speck_mask=mask, mask_origin=(30, 20),
        )  # fmt: skip
        spec = ModelSpec(name="t", version="0", file="", sha256="", backbone="mobilenet_v2")
        findings = ImageFindings(
            source=None, name="geometry", image_shape=(100, 80), spacing_mm=(0.05, 0.07), spacing_source="user",
            photometric="MONOCHROME2", laterality="R", laterality_source="user", view="CC", view_source="user",
            presentation_intent=None, patient_id=None, study_uid=None, series_uid=None, sop_uid=None, manufacturer=None,
            lesions=[lesion], risk=Risk(0.8, "high"), model=ModelInfo("t", "0", "", "mobilenet_v2", 0.1), score_threshold=0.1,
        )  # fmt: skip
        for _run in range(2):  # the second run must replace, not add
            nodes = scene_lib.write_results(
                slicer.mrmlScene,
                volume,
                findings,
                PixelMapping.identity((100, 80)),
                spec,
                DisplayOptions(threshold=0.1),
            )
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLMarkupsROINode")), 1)
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLSegmentationNode")), 1)
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLTableNode")), 1)
        m = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(m)
        # Box [20, 30, 28, 40] in pixel corners = IJK [19.5, 27.5] x [29.5, 39.5]; centre IJK (23.5, 34.5, 0).
        expected = m.MultiplyPoint([23.5, 34.5, 0.0, 1.0])[:3]
        centre = [0.0, 0.0, 0.0]
        nodes.rois[0].GetCenterWorld(centre)
        for a, b in zip(centre, expected):
            self.assertAlmostEqual(a, b, places=4)
        size = nodes.rois[0].GetSize()
        for a, b in zip(size, (8 * 0.07, 10 * 0.05, 1.0)):
            self.assertAlmostEqual(a, b, places=4)
        self.assertTrue(nodes.rois[0].GetLocked())
        self.assertEqual(nodes.rois[0].GetName(), "L1 malignant 0.80")
        self.assertEqual(nodes.table.GetNumberOfRows(), 1)
        labelmap = slicer.util.arrayFromSegmentBinaryLabelmap(
            nodes.segmentation, nodes.segmentation.GetSegmentation().GetNthSegmentID(0), volume
        )
        self.assertEqual(int(labelmap.sum()), 2)
        self.assertEqual(int(labelmap[0, 30 + 2, 20 + 3]), 1)
        self.delayDisplay("Geometry test passed")

    # -- the whole path on the bundled sample, with the bundled model
    def test_SampleMammogram(self) -> None:
        import json

        sample = _paths.sample_path()
        truth = json.loads(_paths.sample_path("sim_R_CC_truth.json").read_text(encoding="utf-8"))
        self.assertTrue(sample.is_file(), f"missing sample {sample}")
        logic = MicrocalcAIModuleLogic()
        logic.setupDependencies(interactive=False)

        try:
            from DICOMLib import DICOMUtils
        except ImportError:  # Slicer built without the DICOM module: load the file directly
            DICOMUtils = None
        if DICOMUtils is not None:
            self.delayDisplay("Loading the simulated mammogram through a temporary DICOM database")
            with DICOMUtils.TemporaryDICOMDatabase() as db:
                DICOMUtils.importDicom(str(sample.parent), db)
                patients = db.patients()
                self.assertEqual(len(patients), 1, "the sample folder must hold one patient")
                nodeIds = DICOMUtils.loadPatientByUID(patients[0])
                loaded = [slicer.mrmlScene.GetNodeByID(i) for i in nodeIds]
                volumes = [n for n in loaded if n is not None and n.IsA("vtkMRMLScalarVolumeNode")]
                self.assertEqual(len(volumes), 1, f"expected one volume from the sample, loaded {nodeIds}")
                # Checked inside the context: the temporary database is slicer.dicomDatabase only here.
                result = self._analyseAndCheck(logic, volumes[0], truth, expectDicom=True)
        else:
            self.delayDisplay("Loading the simulated mammogram as a file (no DICOM module)")
            volume = slicer.util.loadVolume(str(sample))
            result = self._analyseAndCheck(logic, volume, truth, expectDicom=False)
        self.delayDisplay(
            f"Sample analysed: {len(result.findings.lesions)} lesion(s), image risk {result.findings.risk.probability:.2f}"
        )

    def _analyseAndCheck(self, logic: "MicrocalcAIModuleLogic", volume: Any, truth: dict, expectDicom: bool) -> Any:
        fractions = []
        result = logic.process(volume, progress=lambda f, m: fractions.append(f))
        findings = result.findings
        self.assertEqual(fractions[-1], 1.0)
        self.assertEqual((findings.laterality, findings.view), ("R", "CC"))
        if expectDicom:
            self.assertEqual(findings.photometric, "MONOCHROME2")
            self.assertIsNotNone(findings.study_uid)
        # Every known cluster is found by the engine's hit rule, as in scripts/check_sample.py.
        from MicrocalcAI.core.boxes import finds

        for known in truth["lesions"]:
            self.assertTrue(any(finds(les.box_px, known["box_px"]) for les in findings.lesions), f"missed {known}")
        # One ROI / segment / table row per lesion; ROI centres are the boxes through IJK-to-RAS.
        self.assertEqual(len(result.nodes.rois), len(findings.lesions))
        self.assertEqual(result.nodes.segmentation.GetSegmentation().GetNumberOfSegments(), len(findings.lesions))
        self.assertEqual(result.nodes.table.GetNumberOfRows(), len(findings.lesions))
        m = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(m)
        mapping = scene_lib.load_stored(slicer.mrmlScene, volume).mapping
        for lesion, roi in zip(findings.lesions, result.nodes.rois):
            i0, j0, i1, j1 = mapping.box_to_ijk_bounds(lesion.box_px)
            expected = m.MultiplyPoint([(i0 + i1) / 2, (j0 + j1) / 2, 0.0, 1.0])[:3]
            centre = [0.0, 0.0, 0.0]
            roi.GetCenterWorld(centre)
            self.assertTrue(np.allclose(centre, expected, atol=1e-3), f"{roi.GetName()}: {centre} != {expected}")
        # Outputs sit under the input's study; re-running replaces them.
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        study = sh.GetItemAncestorAtLevel(sh.GetItemByDataNode(volume), "Study")
        if expectDicom:
            self.assertTrue(study)
            self.assertEqual(sh.GetItemAncestorAtLevel(sh.GetItemByDataNode(result.nodes.table), "Study"), study)
        again = logic.process(volume)
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLMarkupsROINode")), len(again.nodes.rois))
        # A higher threshold shows fewer or as many lesions, without running the model.
        higher = logic.setThreshold(volume, 0.9)
        self.assertLessEqual(len(higher.rois), len(again.nodes.rois))
        return again
