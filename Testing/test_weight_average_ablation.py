"""benchmarks/ablation_weight_average.py: the mean it writes is the one docs/real-film.md section
10 reports (floating-point tensors averaged, integer counters kept, other model settings refused)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from MicrocalcAI.core.errors import ModelError
from MicrocalcAI.training.checkpoints import CHECKPOINT_FORMAT, load_checkpoint


@pytest.fixture(scope="module")
def script(benchmark_script: Any) -> Iterator[Any]:
    with benchmark_script("ablation_weight_average") as module:
        yield module


def _checkpoint(path: Path, weight: float, counter: int, settings: dict | None = None) -> Path:
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "iteration": counter,
            "model_config": json.dumps(settings or {"backbone": "mobilenet_v2"}),
            "config": "{}",
            "model": {
                "conv.weight": torch.full((2, 2), weight),
                "bn.running_var": torch.full((2,), weight * 2),
                "bn.num_batches_tracked": torch.tensor(counter),
            },
            "best_score": 0.9,
            "best_iteration": counter,
            "best_metrics": json.dumps({"score": 0.9}),
            "bad_validations": 0,
        },
        path,
    )
    return path


def test_average_is_the_mean_of_float_tensors_and_keeps_counters(script: Any, tmp_path: Path) -> None:
    paths = [_checkpoint(tmp_path / f"{i}.pt", w, c) for i, (w, c) in enumerate([(1.0, 500), (2.0, 750), (6.0, 1500)])]
    out = tmp_path / "soup.pt"
    assert script.main([str(out), *map(str, paths)]) == 0
    soup = load_checkpoint(out)  # weights_only: loadable like any checkpoint
    torch.testing.assert_close(soup["model"]["conv.weight"], torch.full((2, 2), 3.0))
    torch.testing.assert_close(soup["model"]["bn.running_var"], torch.full((2,), 6.0))
    assert int(soup["model"]["bn.num_batches_tracked"]) == 500
    assert soup["soup_of"] == [str(p) for p in paths]
    assert json.loads(soup["best_metrics"]) == {}  # one run's validation does not describe the mean


def test_checkpoints_of_other_model_settings_are_refused(script: Any, tmp_path: Path, capsys: Any) -> None:
    a = _checkpoint(tmp_path / "a.pt", 1.0, 1)
    b = _checkpoint(tmp_path / "b.pt", 1.0, 1, {"backbone": "resnet18"})
    with pytest.raises(ModelError, match="other model settings"):
        script.average_checkpoints([a, b])
    assert script.main([str(tmp_path / "soup.pt"), str(a), str(b)]) == 2
    assert "other model settings" in capsys.readouterr().err
    assert not (tmp_path / "soup.pt").exists()
