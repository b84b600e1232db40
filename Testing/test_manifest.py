"""Model manifests: a malformed or tampered model is a clear ModelError, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from MicrocalcAI.cli import main as cli_main
from MicrocalcAI.core.detect.manifest import load_manifest, resolve_model, sha256_file, verify_weights
from MicrocalcAI.core.errors import ChecksumError, ModelError

BASE = {"name": "m", "version": "1", "file": "w.safetensors", "sha256": "00", "backbone": "mobilenet_v2"}


def _write(folder: Path, entry: dict, **top) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"models": [entry], **top}))
    return folder


@pytest.mark.parametrize(
    "bad",
    [
        {"score_threshold": "x"},
        {"sha256": None},
        {"operating_points": [1]},
        {"tile_size": [1]},
        {"backbone": 3},
        {"surprise": 1},
        {"classes": ["a", "b"]},
        {"tile_overlap": 600},
        {"score_threshold": 1.5},
        {"risk_categories": [{"name": "low"}]},
    ],
)
def test_malformed_entries_are_model_errors(tmp_path, bad):
    entry = dict(BASE, **bad)
    with pytest.raises(ModelError, match="manifest|model"):
        load_manifest(_write(tmp_path, entry))


def test_numbers_written_as_strings_are_accepted_as_numbers(tmp_path):
    _, (spec,) = load_manifest(_write(tmp_path, dict(BASE, spacing_mm="0.07", tile_size="384")))
    assert spec.spacing_mm == 0.07 and spec.tile_size == 384


def test_categories_follow_the_manifest(tmp_path):
    cats = [{"name": "low", "min_probability": 0}, {"name": "high", "min_probability": 0.7}]
    _, (spec,) = load_manifest(_write(tmp_path, dict(BASE, risk_categories=cats)))
    assert [spec.category(p) for p in (0.0, 0.69, 0.7, 1.0)] == ["low", "low", "high", "high"]


def test_resolve_by_weights_path_and_checksum(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not really weights")
    _write(tmp_path, dict(BASE, sha256=sha256_file(weights)))
    spec = resolve_model(str(weights))
    assert verify_weights(spec) == weights
    weights.write_bytes(b"tampered")
    with pytest.raises(ChecksumError):
        verify_weights(spec)
    other = tmp_path / "unlisted.safetensors"
    other.write_bytes(b"x")
    with pytest.raises(ModelError, match="not listed"):
        resolve_model(str(other))


def test_models_verify_exit_status_reports_a_bad_checksum(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"abc")
    _write(tmp_path, dict(BASE, sha256=sha256_file(weights)), default="m")
    assert cli_main(["models", "--manifest", str(tmp_path), "--verify"]) == 0
    weights.write_bytes(b"abd")
    assert cli_main(["models", "--manifest", str(tmp_path), "--verify"]) == 2
    assert "FAILED" in capsys.readouterr().out


def test_bundled_manifest_is_valid_and_its_weights_verify():
    default, specs = load_manifest()
    assert default in [s.name for s in specs]
    for spec in specs:
        verify_weights(spec)
        assert "not for clinical use" in spec.intended_use.lower()
        assert spec.training_data and spec.metrics
