"""How long do the DICOM objects take to write and read back, next to the JSON they sit beside?

Uses the findings JSON of an earlier ``microcalcai detect`` run (no model needed) and times,
per image, the median of ``--runs`` runs of: writing the findings JSON (the baseline, timed
in the same run), writing the four DICOM objects, and reading the TID 1500 and CAD SRs back
with the SEG. Prints seconds and ratios to the JSON write.

    python -m MicrocalcAI detect Resources/Samples/sim_R_CC.dcm --out /tmp/bench_out
    python benchmarks/bench_dicom_outputs.py /tmp/bench_out --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MicrocalcAI.core.outputs.dicom import dicom_output_paths, write_dicom_outputs  # noqa: E402
from MicrocalcAI.core.outputs.dicom.read_sr import read_sr  # noqa: E402
from MicrocalcAI.core.outputs.findings_json import load_image_json, write_image_json  # noqa: E402


def median_seconds(job, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        job()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("findings_dir", type=Path, help="output folder of an earlier detect run (DICOM inputs)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(
        f"{'image':16s} {'shape':>11s} {'lesions':>7s} {'json s':>8s} {'dicom s':>8s} {'x json':>7s} {'read tid1500+seg s':>19s} {'read cad+seg s':>15s}"
    )
    for path in sorted(args.findings_dir.glob("*.json")):
        f = load_image_json(path)
        if f.sop_uid is None or f.source is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            t_json = median_seconds(lambda: write_image_json(f, tmp), args.runs)
            t_dicom = median_seconds(lambda: write_dicom_outputs(f, f.source, tmp), args.runs)
            paths = dicom_output_paths(f.name, tmp)
            t_tid = median_seconds(lambda: read_sr(paths["tid1500"], seg=paths["seg"]), args.runs)
            t_cad = median_seconds(lambda: read_sr(paths["cad_sr"], seg=paths["seg"]), args.runs)
        shape = f"{f.image_shape[0]}x{f.image_shape[1]}"
        print(
            f"{f.name[:16]:16s} {shape:>11s} {len(f.lesions):7d} {t_json:8.3f} {t_dicom:8.3f} "
            f"{t_dicom / t_json:7.1f} {t_tid:19.3f} {t_cad:15.3f}"
        )


if __name__ == "__main__":
    main()
