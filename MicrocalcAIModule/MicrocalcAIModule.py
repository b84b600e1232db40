"""MicrocalcAI: breast microcalcification lesions, benign/malignant, and cancer risk, in 3D Slicer.

This file is the thin Slicer layer: module description, the panel (Qt wiring only), a
scriptable Logic and the self-test. Everything that computes or writes MRML lives in
``MicrocalcAIModuleLib`` (tested on the real MRML library without the application) and in
the engine package ``MicrocalcAI`` (no Slicer code at all).

Console use (see docs/slicer.md)::

    logic = slicer.util.getModuleLogic("MicrocalcAIModule")
    result = logic.process(slicer.util.getNode("1: MG image"), device="auto")
    print(result.findings.risk.probability, [roi.GetName() for roi in result.nodes.rois])
"""

import logging
import os
import traceback
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
from slicer.util import VTKObservationMixin

from MicrocalcAIModuleLib import paths as _paths

_paths.ensure_engine_importable()  # sys.path only: nothing is installed or imported here

from MicrocalcAIModuleLib import dependencies, models, runner  # noqa: E402
from MicrocalcAIModuleLib import scene as scene_lib  # noqa: E402
from MicrocalcAIModuleLib.geometry import RoiGeometry, view_field_of_view  # noqa: E402
from MicrocalcAIModuleLib.scene import DisplayOptions  # noqa: E402
from MicrocalcAIModuleLib.volumes import VolumeError, dicom_source_from_database, mammogram_volumes  # noqa: E402

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer < 5.4

    def _(text: str) -> str:
        return text


log = logging.getLogger("MicrocalcAI")

OPERATING_POINT_DEFAULT = "default"
OPERATING_POINT_CUSTOM = "custom"


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


class MicrocalcAIModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: wires widgets to the Logic, shows progress, risks and the lesion list."""

    LESION_COLUMNS = ("Lesion", "Class", "P(malignant)", "Score", "Specks", "Size (mm)")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[MicrocalcAIModuleLogic] = None
        self._parameterNode: Optional[MicrocalcAIModuleParameterNode] = None
        self._parameterNodeGuiTag = None
        self._busy = False
        self._lastDisplay: Optional[tuple] = None
        self._lastVolumeId: Optional[str] = None
        self._modelChoices: list[models.ModelChoice] = []
        self._displayTimer = qt.QTimer()
        self._displayTimer.setSingleShot(True)
        self._displayTimer.setInterval(150)  # a dragged slider rebuilds the nodes once it rests

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(_paths.resource_path("UI/MicrocalcAIModule.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MicrocalcAIModuleLogic()

        self.ui.operatingPointComboBox.addItem(_("Model default"), OPERATING_POINT_DEFAULT)
        self.ui.operatingPointComboBox.addItem(_("Custom threshold"), OPERATING_POINT_CUSTOM)
        self.ui.lesionTableWidget.setColumnCount(len(self.LESION_COLUMNS))
        self.ui.lesionTableWidget.setHorizontalHeaderLabels(list(self.LESION_COLUMNS))
        self.ui.lesionTableWidget.horizontalHeader().setStretchLastSection(True)
        self.ui.lesionTableWidget.verticalHeader().setVisible(False)
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.hide()
        self.ui.outputDirectoryButton.directory = os.path.join(qt.QDir.homePath(), "MicrocalcAI")
        self.ui.exportDicomButton.enabled = runner.dicom_export_function() is not None

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.importWeightsButton.connect("clicked(bool)", self.onImportWeights)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicom)
        self.ui.runBatchButton.connect("clicked(bool)", self.onRunBatch)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.operatingPointComboBox.connect("currentIndexChanged(int)", self.onOperatingPointChanged)
        self.ui.lesionTableWidget.connect("cellClicked(int,int)", self.onLesionClicked)
        self._displayTimer.connect("timeout()", self.applyDisplayOptions)

        self.populateModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self._displayTimer.stop()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.updateResultsPanel()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified
            )

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volumes = mammogram_volumes(slicer.mrmlScene)
            if volumes:
                self._parameterNode.inputVolume = volumes[0]

    def setParameterNode(self, inputParameterNode: Optional[MicrocalcAIModuleParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            if self.hasObserver(
                self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified
            ):
                self.removeObserver(
                    self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified
                )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui file are connected here.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(
                self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified
            )
            self._selectModel(self._parameterNode.modelReference)
            self.onParameterNodeModified()

    # ------------------------------------------------------------------ models
    def populateModels(self) -> None:
        """Fill the model selector from the bundled manifest and the user's imported models."""
        self._modelChoices = models.available_models(self.logic.userModelsDirectory())
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for choice in self._modelChoices:
            self.ui.modelComboBox.addItem(choice.label, choice.reference)
        self.ui.modelComboBox.blockSignals(False)
        if not self._modelChoices:
            self.ui.modelCardLabel.text = _(
                "No model found: the bundled model is missing (broken install?). Import weights to continue."
            )
        self._selectModel(self._parameterNode.modelReference if self._parameterNode else "")

    def _selectModel(self, reference: str) -> None:
        index = next((i for i, c in enumerate(self._modelChoices) if c.reference == reference), 0)
        if self._modelChoices:
            self.ui.modelComboBox.currentIndex = index
            self.onModelChanged(index)

    def _currentModel(self) -> Optional[models.ModelChoice]:
        index = self.ui.modelComboBox.currentIndex
        return self._modelChoices[index] if 0 <= index < len(self._modelChoices) else None

    def onModelChanged(self, index: int) -> None:
        choice = self._currentModel()
        if choice is None:
            return
        self.ui.modelCardLabel.text = models.model_card_html(choice.spec)
        if self._parameterNode and self._parameterNode.modelReference != choice.reference:
            self._parameterNode.modelReference = choice.reference
        self._syncThresholdWithOperatingPoint()

    def onOperatingPointChanged(self, index: int) -> None:
        if self._parameterNode:
            self._parameterNode.operatingPoint = (
                self.ui.operatingPointComboBox.itemData(index) or OPERATING_POINT_DEFAULT
            )
        self._syncThresholdWithOperatingPoint()

    def _syncThresholdWithOperatingPoint(self) -> None:
        """'Model default' pins the threshold to the model's own; 'Custom' frees the slider."""
        if not self._parameterNode:
            return
        custom = self._parameterNode.operatingPoint == OPERATING_POINT_CUSTOM
        self.ui.scoreThresholdSliderWidget.enabled = custom
        choice = self._currentModel()
        if (
            not custom
            and choice is not None
            and abs(self._parameterNode.scoreThreshold - choice.spec.score_threshold) > 1e-9
        ):
            self._parameterNode.scoreThreshold = choice.spec.score_threshold

    def onImportWeights(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Import MicrocalcAI weights"), "",
            _("Weights or manifest (*.safetensors *.pt *.pth *.json);;All files (*)"),
        )  # fmt: skip
        if not path:
            return
        try:
            with slicer.util.WaitCursor():
                choice = self.logic.importModel(path)
        except Exception as exc:  # noqa: BLE001 - a user-chosen file: explain, do not crash
            slicer.util.errorDisplay(_("The weights could not be imported:\n{error}").format(error=exc))
            return
        self.populateModels()
        self._selectModel(choice.reference)
        slicer.util.infoDisplay(
            _("Imported model {name} {version}.").format(name=choice.spec.name, version=choice.spec.version)
        )

    # ------------------------------------------------------------------ parameter changes
    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Keep buttons in step; display-only changes update the nodes without re-running."""
        if not self._parameterNode:
            return
        pn = self._parameterNode
        op_index = self.ui.operatingPointComboBox.findData(pn.operatingPoint)
        if op_index >= 0 and op_index != self.ui.operatingPointComboBox.currentIndex:
            self.ui.operatingPointComboBox.currentIndex = op_index
        self.ui.scoreThresholdSliderWidget.enabled = pn.operatingPoint == OPERATING_POINT_CUSTOM
        has_input = bool(pn.allVolumes or pn.inputVolume)
        self.ui.applyButton.enabled = has_input and not self._busy and bool(self._modelChoices)
        self.ui.applyButton.toolTip = (
            _("Find and classify the calcification lesions.") if has_input else _("Select a mammogram first.")
        )
        self.ui.inputSelector.enabled = not pn.allVolumes and not self._busy
        display = (pn.scoreThreshold, pn.showBenign, pn.showMalignant, pn.segmentsPer)
        rebuild = False
        if self._lastDisplay is not None and display != self._lastDisplay and not self._busy:
            if display[:1] + display[3:] != self._lastDisplay[:1] + self._lastDisplay[3:]:
                rebuild = True
                self._displayTimer.start()  # threshold or grouping: rebuild once the slider rests
            else:
                self._applyClassVisibility()
        self._lastDisplay = display
        volumeId = pn.inputVolume.GetID() if pn.inputVolume else None
        if not rebuild and volumeId != self._lastVolumeId:
            self.updateResultsPanel()  # the rebuild refreshes the panel itself
        self._lastVolumeId = volumeId

    def _displayOptions(self) -> DisplayOptions:
        pn = self._parameterNode
        return DisplayOptions(
            threshold=float(pn.scoreThreshold),
            show_benign=pn.showBenign,
            show_malignant=pn.showMalignant,
            segments_per=pn.segmentsPer,
        )

    def _shownVolumes(self) -> list:
        pn = self._parameterNode
        analysed = scene_lib.analysed_volumes(slicer.mrmlScene)
        if pn.allVolumes:
            return analysed
        return [pn.inputVolume] if pn.inputVolume in analysed else []

    def applyDisplayOptions(self) -> None:
        """Rebuild the shown nodes at the current threshold/grouping (no model run)."""
        if not self._parameterNode:
            return
        try:
            with slicer.util.WaitCursor():
                for volume in self._shownVolumes():
                    self.logic.updateDisplay(volume, self._displayOptions())
        except Exception as exc:  # noqa: BLE001
            logging.exception("updating the MicrocalcAI display failed")
            slicer.util.errorDisplay(_("Could not update the results: {error}").format(error=exc))
        self.updateResultsPanel()

    def _applyClassVisibility(self) -> None:
        pn = self._parameterNode
        for volume in self._shownVolumes():
            scene_lib.set_class_visibility(slicer.mrmlScene, volume, pn.showBenign, pn.showMalignant)

    # ------------------------------------------------------------------ results panel
    def _riskText(self, risk: Any, extra: str = "") -> str:
        colour = scene_lib.risk_colour(risk.category)
        return f'<span style="color:{colour}"><b>{risk.probability:.2f}</b> ({risk.category})</span>{extra}'

    def updateResultsPanel(self) -> None:
        """Risk labels and the lesion list of the selected volume, as currently shown."""
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        try:
            risks = scene_lib.scene_risks(slicer.mrmlScene, volume) if volume else None
        except ImportError as exc:  # a saved scene with results, opened before the packages are installed
            self.ui.statusLabel.text = _("Press Apply to install the packages MicrocalcAI needs ({error}).").format(
                error=exc
            )
            risks = None
        table = self.ui.lesionTableWidget
        table.setRowCount(0)
        if risks is None:
            for label in (self.ui.imageRiskLabel, self.ui.breastRiskLabel, self.ui.examRiskLabel):
                label.text = "-"
            return
        image = risks.image
        views = ", ".join(v or "?" for v in risks.breast.views)
        self.ui.imageRiskLabel.text = self._riskText(
            image.risk, f" &nbsp; {len(image.lesions)} lesion(s) at score &ge; {image.score_threshold:.2f}"
        )
        self.ui.breastRiskLabel.text = self._riskText(
            risks.breast.risk, f" &nbsp; {risks.breast.laterality or '?'} breast, views: {views}"
        )
        self.ui.examRiskLabel.text = self._riskText(risks.exam.risk, f" &nbsp; {len(risks.exam.breasts)} breast(s)")
        nodes = scene_lib.current_result_nodes(slicer.mrmlScene, volume)
        rois = nodes.rois if nodes else []
        table.setRowCount(len(image.lesions))
        for row, lesion in enumerate(image.lesions):
            x0, y0, x1, y1 = lesion.box_mm
            values = (
                f"L{lesion.id}",
                lesion.label,
                f"{lesion.p_malignant:.2f}",
                f"{lesion.score:.2f}",
                str(lesion.speck_count),
                f"{x1 - x0:.1f} x {y1 - y0:.1f}",
            )
            for column, value in enumerate(values):
                item = qt.QTableWidgetItem(value)
                if column == 0 and row < len(rois):
                    item.setData(qt.Qt.UserRole, rois[row].GetID())
                if column == 1:
                    r, g, b = scene_lib.class_colour(lesion.label)
                    item.setForeground(qt.QBrush(qt.QColor.fromRgbF(r * 0.8, g * 0.6, b * 0.2)))
                item.setToolTip(scene_lib.lesion_description(lesion))
                table.setItem(row, column, item)
        table.resizeColumnsToContents()

    def onLesionClicked(self, row: int, column: int) -> None:
        item = self.ui.lesionTableWidget.item(row, 0)
        roi = slicer.mrmlScene.GetNodeByID(item.data(qt.Qt.UserRole)) if item else None
        if roi is not None:
            self.logic.jumpToLesion(roi)

    # ------------------------------------------------------------------ running
    def _setBusy(self, busy: bool) -> None:
        self._busy = busy
        self.ui.cancelButton.enabled = busy
        self.ui.progressBar.visible = busy
        # Everything that changes parameters or starts another job is locked while a job runs:
        # a display option changed mid-run would otherwise be recorded but never applied.
        for widget in (
            self.ui.inputsCollapsibleButton, self.ui.modelCollapsibleButton, self.ui.resultsCollapsibleButton,
            self.ui.exportCollapsibleButton, self.ui.batchCollapsibleButton,
        ):  # fmt: skip
            widget.enabled = not busy
        if busy:
            self.ui.progressBar.value = 0
        self.onParameterNodeModified()

    def _progress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message
        slicer.app.processEvents()  # keeps the panel alive so that Cancel is heard

    def _run(self, title: str, job: Callable[[], Any]) -> Any:
        """Run a long job with progress; user errors become a dialog without traceback."""
        from MicrocalcAI.core.errors import CancelledError, MicrocalcAIError

        self._setBusy(True)
        try:
            return job()
        except CancelledError:
            self.ui.statusLabel.text = _("Cancelled.")
        except (dependencies.DependencyError, MicrocalcAIError, VolumeError, LookupError) as exc:
            self.ui.statusLabel.text = _("Failed: {error}").format(error=exc)
            slicer.util.errorDisplay(str(exc), windowTitle=title)
        except Exception as exc:  # noqa: BLE001 - a bug: show it with details, keep Slicer running
            logging.exception("%s failed", title)
            self.ui.statusLabel.text = _("Failed: {error}").format(error=exc)
            slicer.util.errorDisplay(
                _("{title} failed: {error}").format(title=title, error=exc), detailedText=traceback.format_exc()
            )
        finally:
            self._setBusy(False)
        return None

    def onApplyButton(self) -> None:
        pn = self._parameterNode
        choice = self._currentModel()
        volumes = mammogram_volumes(slicer.mrmlScene) if pn.allVolumes else [pn.inputVolume]
        volumes = [v for v in volumes if v is not None]
        if not volumes:
            slicer.util.errorDisplay(_("There is no 2-D mammogram in the scene to analyse."))
            return
        options = self._displayOptions()

        def job():
            self.logic.setupDependencies(interactive=True)
            outcome = self.logic.processVolumes(
                volumes, model=choice.reference if choice else None, device=pn.device, options=options,
                progress=self._progress, interactive=True,
            )  # fmt: skip
            if outcome.results:
                shown = outcome.results[-1] if not pn.allVolumes else outcome.results[0]
                slicer.util.setSliceViewerLayers(background=shown.volume, fit=True)
            message = _("{n} image(s) analysed.").format(n=len(outcome.results))
            if outcome.failed:
                details = "\n".join(f"{v.GetName()}: {reason}" for v, reason in outcome.failed)
                message += " " + _("{n} failed.").format(n=len(outcome.failed))
                slicer.util.warningDisplay(_("Some images could not be analysed:\n{details}").format(details=details))
            self.ui.statusLabel.text = message
            return outcome

        self._run(_("MicrocalcAI analysis"), job)
        self.updateResultsPanel()

    def onCancelButton(self) -> None:
        self.logic.cancel()
        self.ui.statusLabel.text = _("Cancelling...")

    def onExport(self) -> None:
        folder = self.ui.outputDirectoryButton.directory
        volumes = self._shownVolumes()

        def job():
            written = self.logic.exportResults(volumes, folder)
            self.ui.statusLabel.text = _("Exported {n} file(s) to {folder}").format(n=len(written), folder=folder)

        self._run(_("MicrocalcAI export"), job)

    def onExportDicom(self) -> None:
        folder = self.ui.outputDirectoryButton.directory
        volumes = self._shownVolumes()

        def job():
            written = self.logic.exportDicom(volumes, folder)
            self.ui.statusLabel.text = _("Exported {n} DICOM file(s) to {folder}").format(n=len(written), folder=folder)

        self._run(_("MicrocalcAI DICOM export"), job)

    def onRunBatch(self) -> None:
        source = self.ui.batchInputPathLineEdit.currentPath
        target = self.ui.batchOutputPathLineEdit.currentPath
        if not source or not target:
            slicer.util.errorDisplay(_("Choose an input folder and an output folder for the batch."))
            return
        pn = self._parameterNode
        choice = self._currentModel()

        def job():
            self.logic.setupDependencies(interactive=True)
            result = self.logic.runBatch(
                [source], target, model=choice.reference if choice else None, device=pn.device,
                scoreThreshold=pn.scoreThreshold if pn.operatingPoint == OPERATING_POINT_CUSTOM else None,
                progress=self._progress,
            )  # fmt: skip
            text = _("Batch: {a} analysed, {s} already done, {f} failed. Results in {folder}").format(
                a=len(result.analysed), s=len(result.skipped), f=len(result.failed), folder=target
            )
            self.ui.statusLabel.text = text
            if result.failed:
                slicer.util.warningDisplay(text, detailedText="\n".join(f"{p}: {r}" for p, r in result.failed))

        self._run(_("MicrocalcAI batch"), job)


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
        saved = analyzer.score_threshold
        analyzer.score_threshold = analyzer.spec.score_threshold if scoreThreshold is None else float(scoreThreshold)
        try:
            return runner.run_file_batch(
                inputs,
                outputFolder,
                analyzer,
                force=force,
                spacing_mm=spacingMm,
                progress=progress,
                canceller=self.canceller,
            )
        finally:
            analyzer.score_threshold = saved

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
        """DICOM SR/SEG of the shown findings, through the engine's DICOM writer."""
        writer = runner.dicom_export_function()
        if writer is None:
            raise LookupError("DICOM export is not available in this version of the MicrocalcAI engine")
        written: list[Path] = []
        for volume in volumeNodes:
            findings = scene_lib.shown_findings(slicer.mrmlScene, volume)
            source = self.dicomSource(volume)
            if findings is None or source is None or not source.file:
                raise LookupError(f"'{volume.GetName()}' has no analysed DICOM source to reference")
            written += list(writer(findings, source.file, folder))
        return written

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
