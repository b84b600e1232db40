"""Training with 2 CPU processes (torchrun, DDP over gloo): identical replicas, exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_helpers import simulate_tiny, tiny_train_config

from MicrocalcAI.cli import main as cli_main
from MicrocalcAI.training.checkpoints import load_checkpoint
from MicrocalcAI.training.config import TrainConfig, TrainConfigError
from MicrocalcAI.training.loop import train

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _config_file(coco: Path, out: Path) -> Path:
    config = tiny_train_config(coco, out, num_threads=1)
    path = out.parent / f"{out.name}.json"
    path.write_text(json.dumps(config))
    return path


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def test_two_processes_train_identical_replicas_and_resume_exactly(tmp_path):
    coco = simulate_tiny(tmp_path / "sim", n_images=2, seed=21)

    # Uninterrupted: microcalcai train --nproc 2 (torchrun, gloo).
    ref_cfg = _config_file(coco, tmp_path / "ref")
    assert cli_main(["train", str(ref_cfg), "--nproc", "2", "--quiet"]) == 0
    a = load_checkpoint(tmp_path / "ref" / "last.pt")
    assert a["iteration"] == 4 and a["world_size"] == 2
    digests = a["rank_weights_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks end with the same weights
    assert a["rank_sampler_states"][0] != a["rank_sampler_states"][1]  # but drew different patches
    assert (tmp_path / "ref" / "best.pt").exists()  # rank 0 validated
    lines = (tmp_path / "ref" / "train_log.jsonl").read_text().splitlines()
    assert sum("loss" in json.loads(line) for line in lines) == 4  # one writer: no line twice

    # The same run cancelled after iteration 2 on both ranks, then resumed with --resume.
    cfg = _config_file(coco, tmp_path / "resumed")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    stopped = subprocess.run(
        launch + [str(REPO / "Testing" / "_ddp_train.py"), str(cfg), "0.5"], env=_env(), capture_output=True, text=True
    )
    assert stopped.returncode != 0, stopped.stderr[-2000:]
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["iteration"] == 2
    assert cli_main(["train", str(cfg), "--nproc", "2", "--resume", "--quiet"]) == 0
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert b["iteration"] == 4
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert a["rank_sampler_states"] == b["rank_sampler_states"]
    for ra, rb in zip(a["rank_torch_rng"], b["rank_torch_rng"]):
        assert torch.equal(ra, rb)
    assert a["rank_weights_sha256"] == b["rank_weights_sha256"]

    # A 2-process checkpoint does not silently resume as a 1-process run.
    with pytest.raises(TrainConfigError, match="--nproc 2"):
        train(TrainConfig.from_json(cfg), resume=True)
