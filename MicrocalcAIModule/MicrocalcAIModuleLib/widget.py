"""The module's panel: Qt wiring only, between the .ui widgets and the module's Logic.

Moved out of ``MicrocalcAIModule.py`` (which keeps the thin Module/Widget/Logic/Test classes,
as SlicerNNUnet does) so that the module file reads in one screen. Nothing here computes:
analysis, MRML nodes and risks are the Logic's, the rest of this Lib's and the engine's.
This file needs the Slicer application (Qt), so it is checked inside Slicer only.
"""

import html
import logging
import os
import traceback
from collections.abc import Callable
from typing import Any, Optional

import qt
import slicer
import vtk
from slicer.util import VTKObservationMixin

from . import dependencies, models, paths, runner
from . import scene as scene_lib
from .scene import DisplayOptions
from .volumes import VolumeError, mammogram_volumes

try:
    from slicer.i18n import tr
except ImportError:  # Slicer < 5.4

    def tr(text: str) -> str:
        return text


_ = tr


__all__ = ["OPERATING_POINT_CUSTOM", "OPERATING_POINT_DEFAULT", "MicrocalcAIPanel", "tr"]

OPERATING_POINT_DEFAULT = "default"
OPERATING_POINT_CUSTOM = "custom"


class MicrocalcAIPanel(VTKObservationMixin):
    """The panel: wires widgets to the Logic, shows progress, risks and the lesion list.

    ``layout`` is the module widget's layout, ``logic`` its Logic, ``is_entered`` whether the
    module is the one shown (Slicer's ``parent.isEntered``).
    """

    LESION_COLUMNS = ("Lesion", "Class", "P(malignant)", "Score", "Specks", "Size (mm)")

    def __init__(self, layout: Any, logic: Any, is_entered: Callable[[], bool]) -> None:
        VTKObservationMixin.__init__(self)
        self.layout = layout
        self.logic = logic
        self._isEntered = is_entered
        self._parameterNode: Optional[Any] = None
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
        uiWidget = slicer.util.loadUI(str(paths.resource_path("UI/MicrocalcAIModule.ui")))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

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
        if self._isEntered():
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volumes = mammogram_volumes(slicer.mrmlScene)
            if volumes:
                self._parameterNode.inputVolume = volumes[0]

    def setParameterNode(self, inputParameterNode: Optional[Any]) -> None:
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
        warning_label = self.ui.riskWarningLabel
        if risks is None:
            for label in (self.ui.imageRiskLabel, self.ui.breastRiskLabel, self.ui.examRiskLabel):
                label.text = "-"
            warning_label.text = ""
            warning_label.visible = False
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
        warnings = scene_lib.risk_warnings(risks)
        colour = scene_lib.risk_colour("indeterminate")
        warning_label.text = "<br>".join(
            f'<span style="color:{colour}"><b>&#9888;</b> {html.escape(w)}</span>' for w in warnings
        )
        warning_label.visible = bool(warnings)
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
