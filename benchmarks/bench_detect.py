"""How long does ``detect`` take per image and per tile, for each backbone?

The paper promises "seconds per image" on a radiology workstation; this measures our
equivalent on the machine at hand: a ~2000 x 1000 canonical image (a typical breast at
0.1 mm) with a breast-shaped mask, the manifest's default tiling (512 px, 128 px overlap),
randomly initialised weights (speed does not depend on their values, except for the number
of boxes, which the detector caps per tile).

    python benchmarks/bench_detect.py                      # all backbones, 5 runs each
    python benchmarks/bench_detect.py --backbones mobilenet_v2 --runs 3 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MicrocalcAI.core.detect.manifest import ModelSpec  # noqa: E402
from MicrocalcAI.core.detect.network import BACKBONES, build_detector, select_device  # noqa: E402
from MicrocalcAI.core.detect.run import detect  # noqa: E402
from MicrocalcAI.core.detect.tiling import tile_origins  # noqa: E402
from MicrocalcAI.core.records import CanonicalImage, CanonicalTransform  # noqa: E402


def synthetic_canonical(shape: tuple[int, int] = (2000, 1000), seed: int = 0) -> CanonicalImage:
    """A breast-shaped (half-ellipse at the chest wall) textured image with bright specks."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    rr, cc = np.mgrid[0:rows, 0:cols]
    mask = ((rr - rows / 2) / (rows / 2)) ** 2 + (cc / cols) ** 2 <= 1.0
    image = np.where(mask, 0.45 + 0.08 * rng.standard_normal(shape), 0.0)
    for _ in range(200):
        r, c = rng.integers(0, rows - 2), rng.integers(0, cols // 2)
        image[r : r + 2, c : c + 2] = 1.0
    transform = CanonicalTransform(shape, False, (1.0, 1.0), (0.0, 0.0), shape)
    return CanonicalImage(np.clip(image, 0, 1).astype(np.float32), mask, 0.1, transform)


def bench(
    backbone: str, canonical: CanonicalImage, runs: int, device: torch.device, batch_size: int
) -> dict[str, float]:
    spec = ModelSpec(name="bench", version="0", file="-", sha256="-", backbone=backbone)
    model, _ = build_detector(backbone, anchor_sizes=spec.anchor_sizes, tile_size=spec.tile_size)
    model = model.eval().to(device)
    n_tiles = len(tile_origins(canonical.image.shape, canonical.mask, spec.tile_size, spec.tile_overlap))
    detect(canonical, model, spec, device=device, batch_size=batch_size)  # warm-up (allocator, kernels)
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        detect(canonical, model, spec, device=device, batch_size=batch_size, score_threshold=0.0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "tiles": n_tiles,
        "s_per_image": median,
        "s_per_tile": median / n_tiles,
        "min": min(times),
        "max": max(times),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    canonical = synthetic_canonical()
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, image {canonical.image.shape}"
    )
    for backbone in args.backbones:
        r = bench(backbone, canonical, args.runs, device, args.batch_size)
        print(
            f"{backbone:13s} tiles {r['tiles']:3d}  median {r['s_per_image']:7.2f} s/image  "
            f"{r['s_per_tile']:6.3f} s/tile  (min {r['min']:.2f}, max {r['max']:.2f}, {args.runs} runs)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
