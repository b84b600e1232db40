"""The training state: everything that changes while a detector trains.

One object instead of locals shared by closures, so the step function, validation tracking
and checkpointing take it explicitly, a checkpoint saves exactly it, and a resume (or a
distributed wrapper around the model) restores or replaces exactly it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from MicrocalcAI.training.data import PatchSampler

__all__ = ["TrainingState"]


@dataclass
class TrainingState:
    """Model, optimiser and sampler plus the iteration and best-so-far bookkeeping."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sampler: PatchSampler
    use_amp: bool = False  # mixed precision (CUDA only)
    iteration: int = 0  # optimizer steps completed
    best_score: float = -math.inf  # best validation selection score so far
    best_iteration: Optional[int] = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    bad_validations: int = 0  # validations since the last improvement (early stopping)

    def record_validation(self, score: float, metrics: dict[str, Any]) -> bool:
        """Track a validation result; True when it is a new best."""
        if score > self.best_score:
            self.best_score, self.best_iteration, self.best_metrics = score, self.iteration, metrics
            self.bad_validations = 0
            return True
        self.bad_validations += 1
        return False
