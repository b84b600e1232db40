"""``microcalcai convert``: a public dataset -> the COCO training format."""

from __future__ import annotations

import argparse

from MicrocalcAI.cli.common import EXIT_OK, EXIT_SOME_FAILED, run_with_bar, spacing_arg

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    conv = subparsers.add_parser(
        "convert", help="convert a public dataset (CBIS-DDSM, INbreast, VinDr-Mammo, mini-MIAS, COCO) to training COCO"
    )
    conv.add_argument(
        "kind", metavar="KIND", help="cbis-ddsm, inbreast, vindr-mammo, mini-mias or coco (see docs/datasets.md)"
    )
    conv.add_argument("source", metavar="SOURCE", help="the dataset's folder (or COCO file)")
    conv.add_argument("--out", required=True, metavar="JSON", help="COCO file to write")
    conv.add_argument("--split", default=None, help="cbis-ddsm: train/test; vindr-mammo: training/test")
    conv.add_argument(
        "--spacing",
        type=spacing_arg,
        default=None,
        metavar="MM",
        help="pixel spacing when the files carry none (cbis-ddsm, inbreast)",
    )
    conv.add_argument(
        "--include-negatives",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep images without calcification lesions (default: no, except for coco)",
    )
    conv.add_argument("--strict", action="store_true", help="stop at the first bad row instead of skipping it")
    conv.add_argument(
        "--csv", action="append", default=None, metavar="PATH", help="annotation CSV(s) if not in the default place"
    )
    conv.add_argument("--xml-dir", default=None, help="inbreast: folder of the XML annotations")
    conv.add_argument("--dicom-dir", default=None, help="inbreast: folder of the DICOM images")
    conv.add_argument("--images-dir", default=None, help="vindr-mammo: folder of the images")
    conv.add_argument("--info-txt", default=None, help="mini-mias: the Info.txt file")
    conv.add_argument("--image-root", default=None, help="coco: folder the image paths are relative to")
    conv.add_argument(
        "--cluster-link-mm",
        type=float,
        default=None,
        help="inbreast: link calcifications closer than this into one cluster (5)",
    )
    conv.add_argument("--min-calcifications", type=int, default=None, help="inbreast: smallest cluster (3)")
    conv.add_argument(
        "--calc-margin-mm", type=float, default=None, help="inbreast: margin around a cluster's points (0.5)"
    )
    conv.add_argument(
        "--category-map",
        nargs="+",
        default=None,
        metavar="NAME=CLASS",
        help="coco: map category NAME to benign, malignant or ignore",
    )
    conv.add_argument("--quiet", action="store_true")
    conv.add_argument("--verbose", action="store_true")
    conv.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from MicrocalcAI.core.errors import DatasetError
    from MicrocalcAI.datasets.registry import convert_dataset, normalise_kind

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
    report = run_with_bar(
        "convert", args.quiet, lambda bar: convert_dataset(kind, args.source, args.out, progress=bar, **options)
    )
    print(report.summary())  # type: ignore[attr-defined]
    return EXIT_SOME_FAILED if report.skipped else EXIT_OK  # type: ignore[attr-defined]
