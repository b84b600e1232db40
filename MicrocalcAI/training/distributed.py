"""Training across processes with torch DistributedDataParallel, launched by ``torchrun``.

``torchrun --nproc-per-node K -m MicrocalcAI train CONFIG`` (or ``microcalcai train CONFIG
--nproc K``, which starts torchrun) runs K copies of the ordinary training loop; this module
holds everything that differs from one process:

- process group from torchrun's environment (gloo on CPU, NCCL on CUDA, one GPU per process);
- patches: training draws random patches (:class:`~MicrocalcAI.training.data.PatchSampler`),
  not dataset indices, so a ``DistributedSampler`` has nothing to split; each rank gets its own
  sampler seed instead (rank 0 keeps the configured seed, so one process is exactly today's run)
  and its own torch seed (RPN/ROI sampling). The effective batch is ``batch_size`` x K;
- one writer: rank 0 validates, logs and writes checkpoints; the checkpoint also stores every
  rank's sampler and torch RNG state, so a resume continues all K streams exactly, and the
  sha256 of every rank's weights, so replicas that drifted apart are caught, not saved.

Single-process training (no torchrun) never touches torch.distributed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from MicrocalcAI.core.atomic import atomic_open
from MicrocalcAI.core.errors import ModelError
from MicrocalcAI.training.checkpoints import checkpoint_dict, save_checkpoint
from MicrocalcAI.training.config import TrainConfig, TrainConfigError
from MicrocalcAI.training.data import PatchSampler
from MicrocalcAI.training.state import TrainingState

__all__ = [
    "DistributedContext",
    "distributed_context",
    "rank_seed",
    "restore_rank_states",
    "save_checkpoint_distributed",
    "use_rank_sampler",
    "weights_digest",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Which process this is; ``world_size == 1`` means ordinary single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process on a node (``cuda:LOCAL_RANK``); CPU stays CPU."""
        if self.distributed and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` in DistributedDataParallel (gradients averaged over ranks) when distributed."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)

    @staticmethod
    def unwrap(model: torch.nn.Module) -> torch.nn.Module:
        return getattr(model, "module", model)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 does the block (e.g. fills the standardised-image cache) before the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision (e.g. early stopping), the same on every rank."""
        if not self.distributed:
            return flag
        box = [flag]
        torch.distributed.broadcast_object_list(box, src=0)
        return bool(box[0])

    def close(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def distributed_context(device: torch.device) -> DistributedContext:
    """Join torchrun's process group when launched by it (``WORLD_SIZE`` > 1), else single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    ctx = DistributedContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(ctx.local_rank)
        torch.distributed.init_process_group(backend=backend, init_method="env://")
    if not ctx.is_main:  # one voice in the log: rank 0 speaks, the others only warn
        logging.getLogger("MicrocalcAI").setLevel(logging.WARNING)
    log.info("distributed training: %d processes (%s)", world_size, torch.distributed.get_backend())
    return ctx


def rank_seed(seed: int, rank: int) -> int:
    """Rank 0 keeps ``seed`` (one process = the ordinary run); other ranks get independent streams."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, dtype=np.uint32)[0])


def use_rank_sampler(state: TrainingState, config: TrainConfig, ctx: DistributedContext) -> None:
    """Give this rank its own patch stream and torch RNG (before any resume restores them)."""
    if not ctx.distributed:
        return
    state.sampler = PatchSampler(state.sampler.samples, config.patch, seed=rank_seed(config.seed, ctx.rank))
    torch.manual_seed(rank_seed(config.seed, ctx.rank))


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the model's state dict (names, shapes and bytes), to compare replicas."""
    digest = hashlib.sha256()
    for key, value in DistributedContext.unwrap(model).state_dict().items():
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint_distributed(state: TrainingState, config: TrainConfig, path: Path, ctx: DistributedContext) -> None:
    """Every rank calls this at the same iteration; rank 0 writes one checkpoint for all.

    It holds the ordinary checkpoint (rank 0's model, optimiser and streams) plus each rank's
    sampler state, torch RNG state and weights digest. Replicas whose weights differ are an
    error: DDP keeps them identical, so a difference means a broken set-up.
    """
    if not ctx.distributed:
        save_checkpoint(state, config, path)
        return
    # Batch-norm statistics are updated by each rank's own patches; DDP copies rank 0's to all
    # at the next forward. Do it now, so the replicas (and the checkpoint) agree exactly.
    for buffer in ctx.unwrap(state.model).buffers():
        torch.distributed.broadcast(buffer.data, src=0)
    mine = (state.sampler.get_state(), torch.get_rng_state(), weights_digest(state.model))
    everyone: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(everyone, mine)
    digests = [d for _, _, d in everyone]
    if len(set(digests)) != 1:
        raise ModelError(
            f"the {ctx.world_size} training processes hold different weights at iteration {state.iteration}"
        )
    if not ctx.is_main:
        return
    ckpt = checkpoint_dict(replace(state, model=ctx.unwrap(state.model)), config)
    ckpt.update(
        world_size=ctx.world_size,
        rank_sampler_states=[s for s, _, _ in everyone],
        rank_torch_rng=[r for _, r, _ in everyone],
        rank_weights_sha256=digests,
    )
    serialised = io.BytesIO()
    torch.save(ckpt, serialised)
    with atomic_open(path) as fh:
        fh.write(serialised.getvalue())


def restore_rank_states(ckpt: dict[str, Any], state: TrainingState, ctx: DistributedContext, path: Path) -> None:
    """After the ordinary resume, put back this rank's own sampler and RNG streams."""
    saved = int(ckpt.get("world_size", 1))
    if saved != ctx.world_size:
        raise TrainConfigError(
            f"cannot resume {path}: it was trained by {saved} process(es), this run has {ctx.world_size}; "
            f"resume with the same number (--nproc {saved})"
        )
    if not ctx.distributed:
        return
    state.sampler.set_state(ckpt["rank_sampler_states"][ctx.rank])
    torch.set_rng_state(ckpt["rank_torch_rng"][ctx.rank])
