#!/usr/bin/env bash
# Backbone comparison at an equal WALL-CLOCK training budget (issue: "the backbone choice is
# measured, not assumed"): mobilenet_v2 (ImageNet init) vs resnet50 (random init: no ImageNet
# ResNet weights are available offline).
#
#   BUDGET_S=720 scripts/compare_backbones.sh     # seconds of training per backbone
#   CONFIG=configs/realistic_train.json OUT=work_dirs/backbones_realistic BUDGET_S=1500 \
#       VAL_N=80 TEST_N=120 scripts/compare_backbones.sh   # on the realistic simulator
#
# Needs the simulated splits of scripts/train_default.sh (work_dirs/default/sim_* for the
# default CONFIG; the test set is the sim_test folder next to CONFIG's validation set). Both
# backbones start from their generic initialisation: CONFIG's init_weights is ignored. Steps, one
# backbone after the other (never in parallel), torch threads = $THREADS:
#   1. speed probe: PROBE_ITERS iterations of each backbone -> median s/iteration;
#   2. training: iterations = 0.95 * BUDGET_S / (s/iteration), cosine schedule over that length,
#      warm-up scaled as in configs/default_train.json (100/2400); the run is also stopped at
#      BUDGET_S wall-clock seconds (train() call, data loading included) whichever comes first;
#      same data, patch size, batch size, seed and optimiser as configs/default_train.json;
#      no in-training validation (it would eat the budget), so the LAST checkpoint is used;
#   3. export (train.export_model) to work_dirs/backbones/<backbone>/model, operating points
#      chosen on the first VAL_N validation images; then evaluate_coco on the first TEST_N test
#      images through the whole-image tiled detect() path, timing seconds per image.
# Results: work_dirs/backbones/results.json (and per-backbone folders). Re-running refuses to
# overwrite an existing training folder: delete work_dirs/backbones/<backbone> first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export BUDGET_S=${BUDGET_S:-720} PROBE_ITERS=${PROBE_ITERS:-6} VAL_N=${VAL_N:-20} TEST_N=${TEST_N:-40}
export THREADS=${THREADS:-2} BACKBONES=${BACKBONES:-"mobilenet_v2 resnet50"} STAGE=${STAGE:-all}
export DEVICE=${DEVICE:-cpu} CONFIG=${CONFIG:-configs/default_train.json} OUT=${OUT:-work_dirs/backbones}

"$PYTHON" - <<'EOF'
import json, logging, os, statistics, time
from pathlib import Path

import torch

from MicrocalcAI.core.errors import CancelledError
from MicrocalcAI.training import TrainConfig, evaluate_coco, export_model, train

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
for noisy in ("MicrocalcAI.core.detect.tiles", "MicrocalcAI.core.read", "MicrocalcAI.core.standardise"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
log = logging.getLogger("compare_backbones")

budget, probe_iters = float(os.environ["BUDGET_S"]), int(os.environ["PROBE_ITERS"])
val_n, test_n, threads = int(os.environ["VAL_N"]), int(os.environ["TEST_N"]), int(os.environ["THREADS"])
backbones, stage, device = os.environ["BACKBONES"].split(), os.environ["STAGE"], os.environ["DEVICE"]
torch.set_num_threads(threads)
root = Path(os.environ["OUT"]).resolve()
root.mkdir(parents=True, exist_ok=True)
results_path = root / "results.json"
results = json.loads(results_path.read_text()) if results_path.exists() else {}
config_path = Path(os.environ["CONFIG"]).resolve()
base = json.loads(config_path.read_text())
resolved = TrainConfig.from_dict(base, base_dir=config_path.parent)  # the config file's own path rules
for key in ("train_coco", "val_coco", "cache_dir"):
    base[key] = getattr(resolved, key)


def subset(coco: str, n: int, name: str) -> Path:
    """The first n images of a COCO file, with absolute image paths."""
    src = Path(coco)
    data = json.loads(src.read_text())
    images = data["images"][:n]
    ids = {im["id"] for im in images}
    for im in images:
        im["file_name"] = str((src.parent / im["file_name"]).resolve())
    out = root / name
    out.write_text(json.dumps(dict(data, images=images, annotations=[a for a in data["annotations"] if a["image_id"] in ids])))
    return out


val_sub = subset(base["val_coco"], val_n, f"val_first{val_n}.json")
test_sub = subset(str(Path(base["val_coco"]).parent.parent / "sim_test" / "annotations.json"), test_n, f"test_first{test_n}.json")


def config(backbone: str, out: Path, iterations: int) -> TrainConfig:
    c = dict(base, backbone=backbone, pretrained_backbone=(backbone == "mobilenet_v2"), init_weights=None, output_dir=str(out),
             val_coco=None, iterations=iterations, warmup_iterations=max(1, round(iterations * 100 / 2400)),
             checkpoint_every=10**9, num_threads=threads, device=device, log_every=10)
    return TrainConfig.from_dict(c)


class Clock:
    def __init__(self, limit: float = float("inf")):
        self.start, self.limit, self.ticks = time.monotonic(), limit, []

    def __call__(self, fraction: float, message: str) -> None:
        if message.startswith("iteration"):
            self.ticks.append(time.monotonic())
            if time.monotonic() - self.start > self.limit:
                raise CancelledError(f"wall-clock budget of {self.limit:g} s reached")


for backbone in backbones:
    r = results.setdefault(backbone, {})
    if stage in ("all", "train") and "iterations_reached" not in r:
        clock = Clock()
        train(config(backbone, root / backbone / "probe", probe_iters), clock)
        steps = [b - a for a, b in zip(clock.ticks[1:], clock.ticks[2:])]
        r["probe_s_per_iteration"] = statistics.median(steps)
        iters = max(10, int(0.95 * budget / r["probe_s_per_iteration"]))
        r.update(budget_s=budget, planned_iterations=iters)
        log.info("%s: %.2f s/it in the probe -> %d iterations for %g s", backbone, r["probe_s_per_iteration"], iters, budget)
        clock = Clock(budget)
        try:
            train(config(backbone, root / backbone / "train", iters), clock)
            r["stopped_by"] = "schedule end"
        except CancelledError:
            r["stopped_by"] = "wall-clock budget"
        r["train_wall_s"] = time.monotonic() - clock.start
        r["iterations_reached"] = len(clock.ticks)
        results_path.write_text(json.dumps(results, indent=2))
    if stage in ("all", "eval") and "test" not in r:
        torch.set_num_threads(threads)
        from MicrocalcAI.core.detect.weights import load_detector
        spec = export_model(root / backbone / "train" / "last.pt", root / backbone / "model", f"cmp-{backbone}", "0.0.0",
                            val_coco=val_sub, device=device, training_data="simulated (comparison run)")
        model = load_detector(spec, device)
        t0 = time.monotonic()
        test = evaluate_coco(test_sub, spec, model, device)
        r["inference_s_per_image"] = (time.monotonic() - t0) / test_n
        r["score_threshold"] = spec.score_threshold
        r["validation"] = spec.metrics.get("validation")
        r["test"] = test
        results_path.write_text(json.dumps(results, indent=2))
    t = r.get("test", {})
    log.info("%s: %s", backbone, {k: t.get(k) for k in ("lesion_sensitivity", "fp_per_image", "lesion_auc_benign_vs_malignant")})
results_path.write_text(json.dumps(results, indent=2))
EOF
