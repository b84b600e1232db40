"""Training a detector: data loading through the inference read/standardise path, the loop,
checkpoints and export to a checked weights file plus manifest entry.

    config.py        TrainConfig (JSON in, validated)
    data.py          canonical images (cached) and the patch sampler
    state.py         TrainingState: everything that changes while training
    loop.py          set-up, train_step, validation tracking, train()
    validation.py    whole-image validation measured by MicrocalcAI.evaluation
    checkpoints.py   save / resume / initial weights
    export.py        fp16 weights + manifest entry with operating points
    mining.py        a model's false marks recorded as hard negatives for the next training
    distributed.py   several processes (torchrun, DDP): process group, per-rank streams, one writer
"""

from MicrocalcAI.training.checkpoints import load_checkpoint, model_from_checkpoint
from MicrocalcAI.training.config import TrainConfig, TrainConfigError
from MicrocalcAI.training.export import export_model, write_manifest_entry
from MicrocalcAI.training.loop import TrainResult, train, train_from_config_file
from MicrocalcAI.training.state import TrainingState
from MicrocalcAI.training.validation import evaluate_coco

__all__ = [
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "TrainingState",
    "evaluate_coco",
    "export_model",
    "load_checkpoint",
    "model_from_checkpoint",
    "train",
    "train_from_config_file",
    "write_manifest_entry",
]
