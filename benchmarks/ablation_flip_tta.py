"""Ablation (docs/real-film.md section 8): horizontal-flip test-time augmentation on the
real-film benchmark. Not a product feature: it was measured and not kept.

Every tile is run as is and mirrored left-right; the mirrored pass's boxes are mapped back and
the two sets fused per tile before the usual merge: boxes of the two passes with IoU >= 0.5 are
paired one-to-one (highest IoU first), a pair becomes one box (score-weighted mean corners,
mean p_malignant) whose score is the mean of the two (``mean``) or the larger (``max``); a box
seen in one pass only keeps its box and gets half its score (``mean``, a missing pass counts 0)
or its score (``max``). ``off`` runs the benchmark unchanged.

    python benchmarks/ablation_flip_tta.py mean benchmarks/bench_real_film.py --no-simulated --repeats 4 --out out/tta_mean

It replaces the detector's private per-tile loop (``core.detect.run._run_tiles``, as of commit
58d0f71) for the run, so it follows that function's signature; the OOD feature capture sees two passes per tile and
logs that it has no descriptor (the benchmark does not use it).
"""

import runpy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from MicrocalcAI.core.boxes import box_iou  # noqa: E402
from MicrocalcAI.core.detect import run as run_mod  # noqa: E402
from MicrocalcAI.core.detect.tiling import extract_tile  # noqa: E402

IOU = 0.5
MODES = ("mean", "max", "off")
MODE = sys.argv[1] if len(sys.argv) > 1 else ""


def fuse(a, b, mode):
    na, nb = len(a["scores"]), len(b["scores"])
    out_boxes, out_s, out_p = [], [], []
    used_b = set()
    matched_a = {}
    if na and nb:
        iou = box_iou(a["boxes"], b["boxes"])
        pairs = np.argwhere(iou >= IOU)
        order = np.argsort(-iou[pairs[:, 0], pairs[:, 1]])
        for i, j in pairs[order]:
            if i in matched_a or j in used_b:
                continue
            matched_a[i] = j
            used_b.add(j)
    for i in range(na):
        if i in matched_a:
            j = matched_a[i]
            sa, sb = a["scores"][i], b["scores"][j]
            w = np.array([sa, sb]) / max(sa + sb, 1e-9)
            out_boxes.append(w[0] * a["boxes"][i] + w[1] * b["boxes"][j])
            out_s.append((sa + sb) / 2 if mode == "mean" else max(sa, sb))
            out_p.append((a["p_malignant"][i] + b["p_malignant"][j]) / 2)
        else:
            out_boxes.append(a["boxes"][i])
            out_s.append(a["scores"][i] / 2 if mode == "mean" else a["scores"][i])
            out_p.append(a["p_malignant"][i])
    for j in range(nb):
        if j not in used_b:
            out_boxes.append(b["boxes"][j])
            out_s.append(b["scores"][j] / 2 if mode == "mean" else b["scores"][j])
            out_p.append(b["p_malignant"][j])
    if not out_boxes:
        return {
            "boxes": np.zeros((0, 4), np.float32),
            "scores": np.zeros(0, np.float32),
            "p_malignant": np.zeros(0, np.float32),
        }
    s = np.array(out_s, np.float32)
    o = np.argsort(-s)
    return {"boxes": np.array(out_boxes, np.float32)[o], "scores": s[o], "p_malignant": np.array(out_p, np.float32)[o]}


def _run_tiles(model, image, origins, tile, target, batch_size, report):
    n = len(origins)
    outputs = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                batch = origins[start : start + batch_size]
                grey = torch.from_numpy(np.stack([extract_tile(image, o, tile) for o in batch])).to(target)
                width = grey.shape[-1]
                res_a = model(list(grey.unsqueeze(1).expand(-1, 3, -1, -1)))
                res_b = model(list(grey.flip(-1).unsqueeze(1).expand(-1, 3, -1, -1)))
                for ra, rb in zip(res_a, res_b):
                    a = {k: ra[k].float().cpu().numpy() for k in ("boxes", "scores", "p_malignant")}
                    b = {k: rb[k].float().cpu().numpy() for k in ("boxes", "scores", "p_malignant")}
                    bb = b["boxes"].copy()
                    b["boxes"] = (
                        np.stack([width - bb[:, 2], bb[:, 1], width - bb[:, 0], bb[:, 3]], axis=1) if len(bb) else bb
                    )
                    outputs.append(fuse(a, b, MODE))
                done = start + len(batch)
                report(done / n, f"detecting: tile {done}/{n}")
    finally:
        model.train(was_training)
    return outputs


if __name__ == "__main__":
    if MODE not in MODES or len(sys.argv) < 3:
        raise SystemExit(f"usage: {Path(__file__).name} {{{'|'.join(MODES)}}} SCRIPT [ARGS...]")
    if MODE != "off":
        run_mod._run_tiles = _run_tiles
    script = sys.argv[2]
    sys.argv = [script] + sys.argv[3:]
    runpy.run_path(script, run_name="__main__")
