"""A pip install must be complete on its own: the engine plus its bundled model and schema.

Builds the wheel from this checkout, unpacks it away from the repository and checks that the
unpacked package finds its manifest, verifies the default weights' sha256 and reads the sample.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            str(REPO),
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = out.glob("*.whl")
    return found


def test_wheel_carries_the_bundled_model_and_schema(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    engine = {
        p.relative_to(REPO).as_posix() for p in (REPO / "MicrocalcAI").rglob("*.py") if "__pycache__" not in p.parts
    }
    assert engine - names == set(), "subpackages missing from pyproject's [tool.setuptools] packages"
    assert "MicrocalcAI/py.typed" in names
    assert "MicrocalcAI/_resources/Models/manifest.json" in names
    assert any(n.startswith("MicrocalcAI/_resources/Models/") and n.endswith(".safetensors") for n in names)
    manifest = json.loads((REPO / "Resources" / "Models" / "manifest.json").read_text(encoding="utf-8"))
    for entry in manifest["models"]:  # every file a bundled entry names: weights, OOD reference
        for named in [entry["file"]] + ([entry["ood"]["file"]] if entry.get("ood") else []):
            assert f"MicrocalcAI/_resources/Models/{named}" in names, f"{named} is not in the wheel"
    assert "MicrocalcAI/_resources/Schemas/findings.schema.json" in names
    data = {  # non-Python files inside the engine (the report's templates) are package data
        p.relative_to(REPO).as_posix()
        for p in (REPO / "MicrocalcAI").rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }
    assert "MicrocalcAI/core/outputs/report/templates/exam_report.html.j2" in data
    assert data - names == set(), "add to pyproject's [tool.setuptools.package-data]"
    assert not any(n.startswith(("Testing/", "MicrocalcAIModule/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "microcalcai = MicrocalcAI.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_unpacked_wheel_finds_and_verifies_its_model(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import MicrocalcAI.core.detect.manifest as m, pathlib;"
        "d = m.default_models_dir(); spec = m.resolve_model(None); m.verify_weights(spec);"
        "print(d); print(spec.name)"
    )
    # -S: no site-packages, so the checkout's editable install cannot answer instead of the wheel.
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    models_dir, name = done.stdout.split()
    assert Path(models_dir).is_relative_to(site) and name
