"""Ablation (docs/real-film.md section 10): a uniform average of the weights of fine-tunes that
start from one checkpoint (a "model soup", Wortsman et al., ICML 2022). Not a product feature:
it was measured and not kept.

Every floating-point tensor of the model (weights and BatchNorm running statistics) is the mean
over the checkpoints; integer tensors (BatchNorm's batch counters) are the first checkpoint's.
The first checkpoint's ``format``, ``model_config``, ``config`` and ``iteration`` are kept, so
``microcalcai export`` takes the result like any ``best.pt`` (its manifest then names the first
checkpoint's iteration); ``soup_of`` lists the averaged files and the validation bookkeeping is
emptied (it described one run, not the average). Averaging only makes sense for fine-tunes of one parent (they
stay in one basin of the loss); the script refuses checkpoints of different model settings.

    python benchmarks/ablation_weight_average.py out/soup2.pt \\
        work_dirs/film/train-faint/best.pt work_dirs/film/train-scale/best.pt
    microcalcai export out/soup2.pt --out out/soup2_models ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MicrocalcAI.core.atomic import atomic_open  # noqa: E402
from MicrocalcAI.core.errors import ModelError  # noqa: E402
from MicrocalcAI.training.checkpoints import load_checkpoint  # noqa: E402


def average_checkpoints(paths: list[Path]) -> dict[str, Any]:
    """The first checkpoint with its model tensors replaced by the mean over all of them."""
    if len(paths) < 2:
        raise ModelError("averaging needs at least two checkpoints")
    checkpoints = [load_checkpoint(p) for p in paths]
    first = checkpoints[0]
    for path, ckpt in zip(paths[1:], checkpoints[1:]):
        if ckpt["model_config"] != first["model_config"] or ckpt["model"].keys() != first["model"].keys():
            raise ModelError(f"{path} has other model settings than {paths[0]}: cannot average them")
    model = {}
    for key, tensor in first["model"].items():
        if tensor.is_floating_point():
            total = sum(c["model"][key].double() for c in checkpoints)
            model[key] = (total / len(checkpoints)).to(tensor.dtype)
        else:
            model[key] = tensor.clone()
    # The training state (optimizer, sampler) belonged to one run and is left out.
    out = {k: first[k] for k in ("format", "iteration", "model_config", "config")}
    out.update(model=model, soup_of=[str(p) for p in paths])
    out.update(best_score=float("nan"), best_iteration=-1, best_metrics="{}", bad_validations=0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="checkpoint to write (.pt)")
    parser.add_argument("checkpoints", type=Path, nargs="+", help="fine-tunes of one parent checkpoint")
    args = parser.parse_args(argv)
    try:
        averaged = average_checkpoints(args.checkpoints)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with atomic_open(args.out) as fh:
        torch.save(averaged, fh)
    print(f"wrote {args.out}: the mean of {len(args.checkpoints)} checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
