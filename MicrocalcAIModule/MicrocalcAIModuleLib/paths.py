"""Where the engine package and the shared Resources folder are, installed or in a checkout.

Two layouts must work:

* installed extension (``lib/Slicer-X.Y/qt-scripted-modules/``)::

      MicrocalcAIModule.py
      MicrocalcAIModuleLib/...
      MicrocalcAI/...            the engine, installed next to the module by CMake
      Resources/UI, Icons, Models, Samples, Schemas, requirements.txt

* source checkout in developer mode (the module path added is ``<repo>/MicrocalcAIModule``)::

      <repo>/MicrocalcAIModule/MicrocalcAIModule.py
      <repo>/MicrocalcAI/...
      <repo>/Resources/...

In both, ``MicrocalcAI.core.detect.manifest.default_models_dir()`` finds ``Resources/Models`` next to the
engine package, so the bundled model resolves without configuration.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

__all__ = [
    "ENGINE_PACKAGE",
    "MODULE_DIR",
    "UI_FILE",
    "engine_root",
    "ensure_engine_importable",
    "requirements_path",
    "resource_path",
    "resources_dir",
    "sample_path",
]


log = logging.getLogger(__name__)

#: The module folder (where ``MicrocalcAIModule.py`` lives).
MODULE_DIR = Path(__file__).resolve().parent.parent

ENGINE_PACKAGE = "MicrocalcAI"
UI_FILE = "UI/MicrocalcAIModule.ui"


def _candidates() -> list[Path]:
    """Folders that may hold both ``MicrocalcAI/`` and ``Resources/``: installed first."""
    return [MODULE_DIR, MODULE_DIR.parent]


def engine_root() -> Optional[Path]:
    """The folder that contains the engine package ``MicrocalcAI/``, or None if missing."""
    for folder in _candidates():
        if (folder / ENGINE_PACKAGE / "__init__.py").is_file():
            return folder
    return None


def resources_dir() -> Path:
    """The Resources folder (UI, icons, models, samples, schemas).

    Slicer's ``ScriptedLoadableModuleWidget.resourcePath`` only looks next to the module
    file, which is wrong in a source checkout where Resources/ is at the repository top.
    """
    for folder in _candidates():
        if (folder / "Resources" / UI_FILE).is_file():
            return folder / "Resources"
    for folder in _candidates():
        if (folder / "Resources").is_dir():
            return folder / "Resources"
    return MODULE_DIR / "Resources"


def resource_path(relative: str) -> Path:
    """A file under :func:`resources_dir` (e.g. ``"Icons/MicrocalcAIModule.png"``)."""
    return resources_dir() / relative


def ensure_engine_importable() -> Path:
    """Make ``import MicrocalcAI`` work and return the folder it is imported from.

    Installed, the engine sits on Slicer's scripted-module path already; in a checkout its
    parent folder is put at the front of ``sys.path``. Raises ImportError with a clear
    message when the engine is not shipped (a broken install).
    """
    root = engine_root()
    if root is None:
        raise ImportError(
            "the MicrocalcAI engine package was not found next to the module "
            f"(looked in {', '.join(str(c) for c in _candidates())}); reinstall the extension"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
        log.info("MicrocalcAI engine imported from %s", root)
    return root


def sample_path(name: str = "sim_R_CC.dcm") -> Path:
    """A bundled sample (simulated mammogram with known clusters) for the self-test."""
    return resource_path(f"Samples/{name}")


def requirements_path() -> Path:
    """The module's requirements.txt (Python packages besides torch/torchvision)."""
    return resource_path("requirements.txt")
