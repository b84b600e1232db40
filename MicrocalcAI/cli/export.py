"""``microcalcai export``: a training checkpoint -> fp16 weights plus a manifest entry."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from MicrocalcAI.cli.common import EXIT_OK, run_with_bar
from MicrocalcAI.core.errors import InputError

if TYPE_CHECKING:
    from MicrocalcAI.core.detect.manifest import ModelSpec

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ex = subparsers.add_parser(
        "export", help="turn a training checkpoint into fp16 weights + a manifest entry usable with --model"
    )
    ex.add_argument(
        "checkpoint", nargs="?", default=None, help="best.pt or last.pt from a `microcalcai train` output folder"
    )
    ex.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="models folder: weights and manifest.json go here (an existing manifest is updated); "
        "with --recalibrate the default is the manifest's own folder",
    )
    ex.add_argument("--name", default=None, help="model name (the weights file is NAME-VERSION.safetensors)")
    ex.add_argument("--version", default=None)
    ex.add_argument(
        "--no-calibration",
        action="store_true",
        help="do not fit the score/p_malignant calibration on --val (operating points on raw values)",
    )
    ex.add_argument(
        "--recalibrate",
        metavar="MANIFEST",
        default=None,
        help="instead of exporting a checkpoint: fit the calibration of an existing entry of MANIFEST "
        "(--name, default its default model) on --val and choose its operating points again",
    )
    ex.add_argument(
        "--val", metavar="COCO", default=None, help="validation COCO: operating points are chosen on it (recommended)"
    )
    ex.add_argument("--test", metavar="COCO", default=None, help="held-out COCO to measure the exported weights on")
    ex.add_argument(
        "--training-data", default="", metavar="TEXT", help="what the model was trained on (goes into the manifest)"
    )
    ex.add_argument(
        "--target-fp",
        type=float,
        default=0.5,
        metavar="FP",
        help="score threshold: best validation sensitivity at <= FP false positives per image (default 0.5)",
    )
    ex.add_argument(
        "--negatives",
        nargs="+",
        metavar="COCO",
        default=(),
        help="COCO file(s) of images whose every mark counts as false (e.g. real films from "
        "MicrocalcAI.simulation.delivery.write_film_deliveries): the threshold is raised where needed "
        "so they make at most --max-negative-fp false marks per image",
    )
    ex.add_argument(
        "--max-negative-fp",
        type=float,
        default=1.0,
        metavar="FP",
        help="false marks per image allowed on --negatives (default 1.0)",
    )
    ex.add_argument(
        "--ood-train",
        nargs="+",
        metavar="COCO",
        default=None,
        help="training COCO file(s): also fit the out-of-distribution reference (threshold on --val)",
    )
    ex.add_argument("--not-default", action="store_true", help="do not make this the manifest's default model")
    ex.add_argument("--device", default="auto", help="auto (default), cpu, gpu, cuda, mps")
    ex.add_argument("--quiet", action="store_true")
    ex.add_argument("--verbose", action="store_true")
    ex.set_defaults(func=run)


def _recalibrate(args: argparse.Namespace) -> int:
    from MicrocalcAI.training.calibration_fit import recalibrate_manifest_entry

    if not args.val:
        raise InputError("microcalcai export --recalibrate needs --val COCO (the validation set to fit on)")
    spec, record = cast(
        "tuple[ModelSpec, dict[str, Any]]",
        run_with_bar(
            "recalibrate",
            args.quiet,
            lambda bar: recalibrate_manifest_entry(
                args.recalibrate,
                args.val,
                name=args.name,
                out_dir=args.out,
                target_fp_per_image=args.target_fp,
                negatives_coco=args.negatives,
                max_negative_fp_per_image=args.max_negative_fp,
                device=args.device,
                progress=bar,
            ),
        ),
    )
    cal = spec.calibration
    assert cal is not None
    print(
        f"{spec.name} {spec.version}: temperature {cal.temperature:.3f}, score Platt a={cal.score_a:.3f} b={cal.score_b:.3f}"
    )
    for key in ("score", "p_malignant"):
        block = record[key]
        print(
            f"{key} (n={block['n']}): ECE {block['before']['ece']:.3f} -> {block['after']['ece']:.3f}, "
            f"Brier {block['before']['brier']:.3f} -> {block['after']['brier']:.3f} (on the fitting data)"
        )
    print(f"score threshold {spec.score_threshold}; operating points {spec.operating_points}")
    _print_negatives(spec.metrics.get("negatives"))
    print("risk categories " + ", ".join(f"{c.name} >= {c.min_probability:g}" for c in spec.risk_categories))
    print(f"written to {Path(spec.folder or '.') / 'manifest.json'}")
    return EXIT_OK


def _print_negatives(record: dict[str, Any] | None) -> None:
    if record:
        print(
            f"negatives ({record['n_images']} images): {record['fp_per_image_at_validation_threshold']:.2f} false marks "
            f"per image at the validation threshold {record['validation_threshold']:.2f}, "
            f"{record['fp_per_image']:.2f} at {record['score_threshold']:.2f} (cap {record['max_fp_per_image']:g})"
        )
        if record.get("n_images_refused"):
            print(f"warning: {record['n_images_refused']} negatives image(s) could not be analysed (see the log)")
        if not record.get("cap_met", True):
            print("warning: the cap is not met even at the highest threshold (0.95)")


def run(args: argparse.Namespace) -> int:
    from MicrocalcAI.training.export import export_model

    if args.recalibrate:
        ignored = [
            flag
            for flag, value in (("--ood-train", args.ood_train), ("--no-calibration", args.no_calibration))
            if value
        ]
        if ignored:
            raise InputError(
                f"microcalcai export --recalibrate does not take {', '.join(ignored)}; "
                "fit an OOD reference with `microcalcai ood-reference`"
            )
        return _recalibrate(args)
    missing = [
        flag
        for flag, value in (
            ("CHECKPOINT", args.checkpoint),
            ("--out", args.out),
            ("--name", args.name),
            ("--version", args.version),
        )
        if not value
    ]
    if missing:
        raise InputError(f"microcalcai export: {', '.join(missing)} required (or use --recalibrate MANIFEST)")

    spec = cast(
        "ModelSpec",
        run_with_bar(
            "export",
            args.quiet,
            lambda bar: export_model(
                args.checkpoint,
                args.out,
                args.name,
                args.version,
                val_coco=args.val,
                test_coco=args.test,
                training_data=args.training_data,
                target_fp_per_image=args.target_fp,
                negatives_coco=args.negatives,
                max_negative_fp_per_image=args.max_negative_fp,
                make_default=not args.not_default,
                device=args.device,
                calibrate=not args.no_calibration,
                ood_train_coco=args.ood_train,
                progress=bar,
            ),
        ),
    )
    print(
        f"wrote {Path(args.out) / spec.file} (sha256 {spec.sha256[:12]}...) and its entry in {Path(args.out) / 'manifest.json'}"
    )
    print(f"score threshold {spec.score_threshold}; operating points {spec.operating_points}")
    _print_negatives(spec.metrics.get("negatives"))
    for split in ("validation", "test"):
        m = spec.metrics.get(split)
        if m and m.get("lesion_sensitivity") is not None:
            print(
                f"{split}: lesion sensitivity {m['lesion_sensitivity']:.3f} at {m['fp_per_image']:.2f} FP/image "
                f"({m['n_images']} images, {m['n_lesions']} lesions)"
            )
    print(f"use it with: microcalcai detect INPUT --out DIR --model {Path(args.out) / 'manifest.json'}")
    return EXIT_OK
