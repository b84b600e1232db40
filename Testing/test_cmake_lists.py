"""The extension's CMake files install everything the module needs, and nothing is forgotten.

A Python file missing from ``MicrocalcAIModule/CMakeLists.txt`` is silently missing from the
installed extension (the module then fails on the user's machine with an ImportError), so:

* every ``.py`` of the module and of the engine package must be listed;
* every listed file must exist (the real Slicer macro stops the build otherwise);
* the extension metadata the Extension Manager shows must be complete;
* configuring, building and installing the extension against a stand-in for Slicer's CMake
  macros (same copy/install semantics as ``slicerMacroBuildScriptedModule`` and CTK's
  ``ctkMacroCompilePythonScript``) must give a tree where the module's library and the
  engine import, and where the engine finds ``Resources/Models`` and the module finds its UI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOP_CMAKE = REPO / "CMakeLists.txt"
MODULE_CMAKE = REPO / "MicrocalcAIModule" / "CMakeLists.txt"


def cmake_set_lists(path: Path) -> dict[str, list[str]]:
    """``set(NAME a b c)`` blocks of a CMake file as {NAME: [a, b, c]} (comments removed)."""
    text = "\n".join(_strip_comment(line) for line in path.read_text(encoding="utf-8").splitlines())
    out: dict[str, list[str]] = {}
    for match in re.finditer(r"\bset\(\s*([A-Za-z_][A-Za-z0-9_]*)\s+([^)]*)\)", text):
        out[match.group(1)] = re.findall(r'"[^"]*"|[^\s]+', match.group(2))
    return out


def _strip_comment(line: str) -> str:
    """A CMake line without its ``#`` comment (a ``#`` inside a quoted string is kept)."""
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


def _module_lists() -> dict[str, list[str]]:
    return cmake_set_lists(MODULE_CMAKE)


def _python_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


def test_every_module_python_file_is_listed():
    lists = _module_lists()
    module_dir = REPO / "MicrocalcAIModule"
    listed = {s.replace("${MODULE_NAME}", "MicrocalcAIModule") for s in lists["MODULE_PYTHON_SCRIPTS"]}
    missing = _python_files(module_dir) - listed
    assert not missing, f"add to MODULE_PYTHON_SCRIPTS in {MODULE_CMAKE}: {sorted(missing)}"


def test_every_engine_python_file_is_listed():
    listed = set(_module_lists()["ENGINE_PYTHON_SCRIPTS"])
    engine = {f"MicrocalcAI/{name}" for name in _python_files(REPO / "MicrocalcAI")}
    missing = engine - listed
    assert not missing, f"add to ENGINE_PYTHON_SCRIPTS in {MODULE_CMAKE}: {sorted(missing)}"


def test_every_listed_file_exists():
    lists = _module_lists()
    module_dir = REPO / "MicrocalcAIModule"
    for name in lists["MODULE_PYTHON_SCRIPTS"]:
        assert (module_dir / name.replace("${MODULE_NAME}", "MicrocalcAIModule")).is_file(), name
    for name in lists["ENGINE_PYTHON_SCRIPTS"] + lists["MODULE_RESOURCES"]:
        assert (REPO / name).is_file(), name


def test_runtime_resources_are_listed():
    listed = set(_module_lists()["MODULE_RESOURCES"])
    needed = {"Resources/requirements.txt", "Resources/Icons/MicrocalcAIModule.png"}
    for sub in ("UI", "Samples", "Schemas"):
        needed |= {p.relative_to(REPO).as_posix() for p in (REPO / "Resources" / sub).glob("*") if p.is_file()}
    missing = needed - listed
    assert not missing, f"add to MODULE_RESOURCES in {MODULE_CMAKE}: {sorted(missing)}"


def test_engine_data_files_are_listed():
    """Non-Python files the engine loads at run time (the report's template) must be installed too."""
    listed = set(_module_lists()["MODULE_RESOURCES"])
    data = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "MicrocalcAI").rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc", ".typed") and "__pycache__" not in p.parts
    }
    assert "MicrocalcAI/core/outputs/report/templates/exam_report.html.j2" in data
    missing = data - listed
    assert not missing, f"add to MODULE_RESOURCES in {MODULE_CMAKE}: {sorted(missing)}"


def test_model_files_named_by_the_manifest_are_installed():
    manifest = REPO / "Resources" / "Models" / "manifest.json"
    if not manifest.is_file():
        pytest.skip("no bundled model yet")
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    patterns = re.findall(r"\$\{PROJECT_SOURCE_DIR\}/Resources/Models/(\*\.[A-Za-z0-9]+)", text)
    assert "*.json" in patterns
    for entry in json.loads(manifest.read_text(encoding="utf-8"))["models"]:
        # every file an entry names: its weights and, when it ships one, its OOD reference
        for named in [entry["file"]] + ([entry["ood"]["file"]] if entry.get("ood") else []):
            path = Path(named)
            assert not path.is_absolute() and path.parent == Path("."), (
                f"{path}: bundled model files must sit next to the manifest"
            )
            assert any(path.match(p) for p in patterns), f"{path} is not matched by the Models globs {patterns}"


def test_extension_metadata_is_complete():
    values = cmake_set_lists(TOP_CMAKE)
    text = TOP_CMAKE.read_text(encoding="utf-8")
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
    ):
        assert values.get(key) and values[key][0].strip('"'), key
    assert "PyTorch" in " ".join(values["EXTENSION_DEPENDS"])
    assert values["EXTENSION_ICONURL"][0].strip('"').endswith(".png")
    assert re.search(r"add_subdirectory\(\s*MicrocalcAIModule\s*\)", text)
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text and "include(${Slicer_EXTENSION_CPACK})" in text
    assert re.search(r"project\(\s*MicrocalcAI\s*\)", text)


# ----------------------------------------------------------------------------- a real install

_SLICER_CONFIG = """
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
"""

# Stand-ins with the copy/install semantics of Slicer's and CTK's macros: scripts and
# resources are paths relative to SOURCE_DIR (default: the calling CMakeLists' folder),
# copied to DESTINATION_DIR/<same relative path>, and that folder is installed to INSTALL_DIR.
_USE_SLICER = r"""
set(Slicer_USE_PYTHONQT ON)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
set(BUILD_TESTING OFF)

macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${ARGN})
  if(NOT DEFINED MY_SOURCE_DIR)
    set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  set(_copied)
  foreach(file ${MY_SCRIPTS} ${MY_RESOURCES})
    if(IS_ABSOLUTE ${file})
      message(FATAL_ERROR "absolute path ${file}: it would be copied outside the module folder")
    endif()
    set(_tgt ${MY_DESTINATION_DIR}/${file})
    add_custom_command(OUTPUT ${_tgt} DEPENDS ${MY_SOURCE_DIR}/${file}
      COMMAND ${CMAKE_COMMAND} -E copy ${MY_SOURCE_DIR}/${file} ${_tgt})
    list(APPEND _copied ${_tgt})
  endforeach()
  add_custom_target(Copy${MY_TARGET_NAME}PythonFiles ALL DEPENDS ${_copied})
  install(DIRECTORY ${MY_DESTINATION_DIR}/ DESTINATION ${MY_INSTALL_DIR} COMPONENT RuntimeLibraries USE_SOURCE_PERMISSIONS)
endmacro()

macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  foreach(value ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${value} AND NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${value}.py)
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file or directory '${value}'")
    endif()
  endforeach()
  ctkMacroCompilePythonScript(
    TARGET_NAME ${MY_SLICER_NAME}
    SCRIPTS "${MY_SLICER_SCRIPTS}"
    RESOURCES "${MY_SLICER_RESOURCES}"
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
    NO_INSTALL_SUBDIR)
endmacro()

macro(slicer_add_python_unittest)
endmacro()
"""

_CHECK_INSTALLED = r"""
import sys
from pathlib import Path
root = Path(sys.argv[1])
# A development install of the engine (pip install -e) would quietly supply any file the
# installed tree lacks: drop its import hooks so only the installed files can be imported.
sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path.insert(0, str(root))
import MicrocalcAIModuleLib.paths as paths
assert paths.MODULE_DIR == root, paths.MODULE_DIR
assert paths.engine_root() == root, paths.engine_root()
paths.ensure_engine_importable()
import MicrocalcAI, MicrocalcAI.core.detect.manifest, MicrocalcAI.core.pipeline, MicrocalcAI.core.read, MicrocalcAI.core.outputs.findings_json, MicrocalcAI.core.detect.run
assert Path(MicrocalcAI.__file__).resolve().parent == root / "MicrocalcAI", MicrocalcAI.__file__
assert paths.resources_dir() == root / "Resources"
assert paths.resource_path("UI/MicrocalcAIModule.ui").is_file()
assert paths.requirements_path().is_file()
assert paths.sample_path().is_file()
models = MicrocalcAI.core.detect.manifest.default_models_dir()
assert models.resolve() == (root / "Resources" / "Models").resolve() or not (root / "Resources" / "Models" / "manifest.json").is_file(), models
for name in ("geometry", "volumes", "scene", "runner", "models", "dependencies"):
    __import__("MicrocalcAIModuleLib." + name)
import pkgutil
for info in pkgutil.iter_modules([str(root / "MicrocalcAI")]):
    if not info.name.startswith("__"):  # __main__ would run the command line
        __import__("MicrocalcAI." + info.name)  # every engine module imports from the installed files alone
for name, module in list(sys.modules.items()):
    if name.split(".")[0] in ("MicrocalcAI", "MicrocalcAIModuleLib") and getattr(module, "__file__", None):
        assert Path(module.__file__).resolve().is_relative_to(root.resolve()), (name, module.__file__)
print("installed tree OK")
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_configure_build_install_gives_a_working_module_tree(tmp_path):
    fake = tmp_path / "Slicer"
    fake.mkdir()
    (fake / "SlicerConfig.cmake").write_text(_SLICER_CONFIG)
    (fake / "UseSlicer.cmake").write_text(_USE_SLICER)
    (fake / "Empty.cmake").write_text("")
    build, prefix = tmp_path / "build", tmp_path / "install"
    env = dict(os.environ)
    run = lambda *args: subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)  # noqa: E731
    configured = run(
        "cmake", "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={fake}", f"-DCMAKE_INSTALL_PREFIX={prefix}"
    )
    assert configured.returncode == 0, configured.stdout + configured.stderr
    built = run("cmake", "--build", str(build))
    assert built.returncode == 0, built.stdout + built.stderr
    installed = run("cmake", "--install", str(build))
    assert installed.returncode == 0, installed.stdout + installed.stderr

    root = prefix / "lib" / "Slicer-5.8" / "qt-scripted-modules"
    assert (root / "MicrocalcAIModule.py").is_file()
    listed = _module_lists()
    for name in listed["ENGINE_PYTHON_SCRIPTS"] + listed["MODULE_RESOURCES"]:
        assert (root / name).is_file(), f"{name} is not installed"
    check = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CHECK_INSTALLED), str(root)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in env.items() if k not in ("PYTHONPATH", "MICROCALCAI_MODELS_DIR")},
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "installed tree OK" in check.stdout


# ----------------------------------------------------------------------------- the module's UI

UI_FILE = REPO / "Resources" / "UI" / "MicrocalcAIModule.ui"
MODULE_FILE = REPO / "MicrocalcAIModule" / "MicrocalcAIModule.py"


def _ui_widgets() -> dict[str, dict[str, str]]:
    """{widget name: {"class": ..., "SlicerParameterName": ...}} of the .ui file."""
    import xml.etree.ElementTree as ET

    out: dict[str, dict[str, str]] = {}
    for widget in ET.parse(UI_FILE).getroot().iter("widget"):
        info = {"class": widget.get("class", "")}
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                info["SlicerParameterName"] = prop.findtext("string") or ""
        out[widget.get("name", "")] = info
    return out


def test_ui_is_valid_designer_xml_with_unique_names():
    import xml.etree.ElementTree as ET

    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.findtext("class") == "MicrocalcAIModule"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names))
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared


def test_ui_parameter_names_match_the_parameter_node_and_code_uses_existing_widgets():
    import ast

    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    wrapper = next(
        n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "MicrocalcAIModuleParameterNode"
    )
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    widgets = _ui_widgets()
    bound = {info["SlicerParameterName"] for info in widgets.values() if "SlicerParameterName" in info}
    assert bound <= fields, f"unknown SlicerParameterName(s): {bound - fields}"
    assert {
        "inputVolume",
        "allVolumes",
        "device",
        "scoreThreshold",
        "showBenign",
        "showMalignant",
        "segmentsPer",
    } <= bound
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used <= set(widgets), f"widgets used in code but missing from the .ui: {used - set(widgets)}"
    for needed in ("applyButton", "cancelButton", "progressBar", "statusLabel", "imageRiskLabel", "breastRiskLabel",
                   "examRiskLabel", "lesionTableWidget", "showBenignCheckBox", "showMalignantCheckBox", "exportButton",
                   "exportDicomButton", "modelComboBox", "importWeightsButton", "modelCardLabel", "deviceComboBox",
                   "operatingPointComboBox", "scoreThresholdSliderWidget", "allVolumesCheckBox", "inputSelector"):  # fmt: skip
        assert needed in widgets, needed
