"""``microcalcai simulate``: simulated mammograms with calcification clusters and COCO annotations."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from MicrocalcAI.cli.common import EXIT_OK, fraction_arg, run_with_bar, spacing_arg
from MicrocalcAI.core.errors import InputError

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = subparsers.add_parser(
        "simulate", help="write simulated mammograms with calcification clusters + COCO annotations"
    )
    sim.add_argument("--out", required=True, metavar="DIR")
    sim.add_argument("-n", "--n-images", type=int, default=20)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--contact-sheet", action="store_true", help="also write contact_sheet.png")
    sim.add_argument(
        "--realistic",
        action="store_true",
        help="BI-RADS morphologies, hard negatives, vessels/ducts/ligaments, 0.05-0.2 mm, 8-16 bit",
    )
    sim.add_argument(
        "--film",
        action="store_true",
        help="the realistic simulator seen through the film chain: specks rendered finely, blurred "
        "(sigma 0.03-0.15 mm) and area-averaged, physical calcium contrast, film clutter as hard "
        "negatives, mostly 8-bit; default backgrounds are the training views of the 'mammograms' "
        "package (its held-out views never)",
    )
    sim.add_argument(
        "--format",
        choices=("dicom", "png"),
        default="dicom",
        help="image files: DICOM MG (default) or greyscale PNG (spacing in the COCO file)",
    )
    sim.add_argument(
        "--backgrounds",
        nargs="+",
        metavar="PATH",
        help="real mammograms (DICOM files or folders of them) to cut backgrounds from "
        "(default: the 8 CBIS-DDSM images of the 'mammograms' package; with --film its 4 training views)",
    )
    sim.add_argument(
        "--background-spacing",
        type=spacing_arg,
        default=None,
        metavar="MM",
        help="pixel spacing of background files that carry none; ImagerPixelSpacing/PixelSpacing are "
        "used where present (default: guessed as detect does, DDSM's 0.05 mm unless the image is then "
        "no whole mammogram's size, with a warning; the bundled CBIS-DDSM films are 0.05 mm)",
    )
    sim.add_argument(
        "--real-fraction",
        type=fraction_arg,
        default=None,
        help="fraction of images built on real backgrounds (default 0.5; 0 = procedural only)",
    )
    sim.add_argument(
        "--contrast-spread",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="with --film: the calcium attenuation of each cluster, and of each calcification-like "
        "look-alike (dust, emulsion spots...), is the chain's times a factor drawn uniformly from "
        "[LO, HI] (default 0.8 1.2); e.g. 0.35 0.8 for a set of fainter clusters",
    )
    sim.add_argument(
        "--lookalike-contrast-spread",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="with --film: draw the look-alikes' factor from [LO, HI] instead of --contrast-spread's range; "
        "e.g. --contrast-spread 0.3 0.8 --lookalike-contrast-spread 0.8 1.2 for faint clusters among "
        "look-alikes at full contrast",
    )
    sim.add_argument(
        "--morphologies",
        nargs="+",
        default=None,
        metavar="NAME",
        help="with --realistic or --film: draw clusters only of these BI-RADS morphologies ('all', on its own: "
        "every one, the default); e.g. punctate amorphous coarse_heterogeneous fine_pleomorphic "
        "fine_linear_branching, the morphologies of biopsied clusters (every benign cluster is then punctate). "
        "A benign cluster is drawn among the benign ones left, a malignant one among the malignant ones; "
        "where none of its class is left, its class follows the morphology drawn",
    )
    sim.add_argument("--quiet", action="store_true")
    sim.add_argument("--verbose", action="store_true")
    sim.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from MicrocalcAI.simulation.backgrounds import RealBackgroundLibrary, find_background_files
    from MicrocalcAI.simulation.calcifications import morphology_selection
    from MicrocalcAI.simulation.config import SimulationConfig
    from MicrocalcAI.simulation.simulate import simulate_dataset
    from MicrocalcAI.simulation.writers import write_contact_sheet

    extra: dict[str, Any] = {} if args.real_fraction is None else {"real_fraction": args.real_fraction}
    if args.film and args.realistic:
        raise InputError("--film and --realistic are two presets: give one")
    if args.contrast_spread is not None:
        if not args.film:
            raise InputError("--contrast-spread applies to the film chain: give --film too")
        extra["lesion_contrast_spread"] = tuple(args.contrast_spread)
    if args.lookalike_contrast_spread is not None:
        if not args.film:
            raise InputError("--lookalike-contrast-spread applies to the film chain: give --film too")
        extra["lookalike_contrast_spread"] = tuple(args.lookalike_contrast_spread)
    if args.morphologies is not None:
        if not (args.film or args.realistic):
            raise InputError("--morphologies chooses among the BI-RADS morphologies: give --realistic or --film too")
        try:
            extra["birads_morphologies"] = morphology_selection(args.morphologies)
        except ValueError as exc:
            raise InputError(f"--morphologies: {exc}") from exc
    if args.film:
        config = SimulationConfig.film(n_images=args.n_images, seed=args.seed, **extra)
    elif args.realistic:
        config = SimulationConfig.realistic(n_images=args.n_images, seed=args.seed, **extra)
    else:
        config = SimulationConfig(n_images=args.n_images, seed=args.seed, **extra)
    backgrounds = None
    if args.backgrounds and config.real_fraction > 0:
        files = find_background_files(args.backgrounds)
        if not files:
            raise InputError(f"no DICOM files found in {' '.join(args.backgrounds)}")
        backgrounds = RealBackgroundLibrary.from_files(files, spacing_mm=args.background_spacing)
        print(f"real backgrounds: {len(files)} file(s)")
    coco = run_with_bar(
        "simulate",
        args.quiet,
        lambda bar: simulate_dataset(args.out, config, progress=bar, backgrounds=backgrounds, file_format=args.format),
    )
    print(f"wrote {args.n_images} image(s); annotations: {coco}")
    if args.contact_sheet:
        sheet = Path(args.out) / "contact_sheet.png"
        write_contact_sheet(Path(str(coco)), sheet)
        print(f"contact sheet: {sheet}")
    return EXIT_OK
