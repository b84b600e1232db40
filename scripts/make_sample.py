"""Write the bundled sample mammogram: a simulated right CC view with known calcification clusters.

The sample lets a new user (and the Slicer module's self-test) run the whole pipeline without
any patient data, and check the result against known truth. It is deterministic: re-running
this script reproduces the same pixels, UIDs and truth file.

    python scripts/make_sample.py [--out Resources/Samples]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from MicrocalcAI.core.atomic import atomic_write_text  # noqa: E402
from MicrocalcAI.simulation.config import SimulationConfig  # noqa: E402
from MicrocalcAI.simulation.simulate import simulate_image  # noqa: E402
from MicrocalcAI.simulation.writers import build_dicom, deterministic_uid, write_dicom  # noqa: E402

SEED = 20240601
NAME = "sim_R_CC"
#: Whole procedural breast, ~2000 x 1400 px at 0.1 mm, with one cluster of each class plus one more.
SIZE_MM = (200.0, 140.0)
SPACING_MM = 0.1
CATEGORIES = ("malignant", "benign", "malignant")


def make_sample(out_dir: Path) -> tuple[Path, Path]:
    """Render the sample and write ``sim_R_CC.dcm`` and ``sim_R_CC_truth.json`` into ``out_dir``."""
    config = SimulationConfig(n_images=1, seed=SEED, bits_choices=(12,), monochrome1_fraction=0.0, real_fraction=0.0)
    rng = np.random.default_rng(SEED)
    pixels, meta, lesions = simulate_image(
        rng, config, laterality="R", view="CC", spacing_mm=SPACING_MM, size_mm=SIZE_MM, categories=CATEGORIES
    )
    if len(lesions) != len(CATEGORIES):
        raise RuntimeError(f"only {len(lesions)} of {len(CATEGORIES)} clusters could be placed; change SEED")
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = build_dicom(
        pixels,
        meta,
        patient_id="SIM_SAMPLE",
        study_uid=deterministic_uid(SEED, "sample-study"),
        series_uid=deterministic_uid(SEED, "sample-series"),
        sop_uid=deterministic_uid(SEED, "sample-sop"),
        description="MicrocalcAI simulated sample (not a patient)",
    )
    dcm = write_dicom(out_dir / f"{NAME}.dcm", ds)
    truth = {
        "file": dcm.name,
        "description": "Simulated right CC mammogram with known calcification clusters (MicrocalcAI.simulation).",
        "seed": SEED,
        "spacing_mm": [meta.spacing_mm, meta.spacing_mm],
        "image_shape": [int(pixels.shape[0]), int(pixels.shape[1])],
        "laterality": meta.laterality,
        "view": meta.view,
        "photometric": meta.photometric,
        "bits_stored": meta.bits_stored,
        "box_convention": "stored pixels [x0, y0, x1, y1], x = column, pixel-corner coordinates",
        "lesions": [
            {
                "class": les.category,
                "box_px": [float(v) for v in les.box_px],
                "box_mm": [round(float(v) * meta.spacing_mm, 3) for v in les.box_px],
                "n_specks": les.n_specks,
                "morphology": les.morphology,
                "distribution": les.distribution,
            }
            for les in lesions
        ],
    }
    truth_path = out_dir / f"{NAME}_truth.json"
    atomic_write_text(truth_path, json.dumps(truth, indent=2) + "\n")
    return dcm, truth_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Samples")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    dcm, truth = make_sample(args.out)
    logging.info("wrote %s (%.2f MB) and %s", dcm, dcm.stat().st_size / 1e6, truth)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
