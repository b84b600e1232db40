"""mini-MIAS adapter: ``Info.txt`` + ``mdbNNN.pgm`` -> COCO.

Each abnormality is a circle (centre, radius) with the origin at the BOTTOM-left corner,
200 um pixels.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

from MicrocalcAI.core.errors import DatasetError
from MicrocalcAI.core.records import ProgressCallback
from MicrocalcAI.datasets.common import (
    CocoBuilder,
    ConversionReport,
    PathLike,
    check_source,
    or_no_progress,
    pgm_size,
    walk_files,
)

__all__ = [
    "MINI_MIAS_SPACING_MM",
    "convert_mini_mias",
]

log = logging.getLogger(__name__)

#: mini-MIAS pixel size: the 50 um MIAS films reduced to 200 um (MIAS MiniMammographic Database).
MINI_MIAS_SPACING_MM = 0.2


def convert_mini_mias(
    source: PathLike,
    out_json: PathLike,
    *,
    progress: Optional[ProgressCallback] = None,
    info_txt: Optional[PathLike] = None,
    include_negatives: bool = False,
    strict: bool = False,
) -> ConversionReport:
    """Convert mini-MIAS (``Info.txt`` + ``mdbNNN.pgm``) calcification rows to COCO.

    ``Info.txt`` rows are ``REFNUM BG CLASS SEVERITY X Y RADIUS``; CLASS ``CALC`` rows are
    lesions, SEVERITY B/M the class. The centre (X, Y) has its ORIGIN AT THE BOTTOM-LEFT
    corner, so the stored row is ``height - Y``; the box is the circle's square
    ``[X - R, height - Y - R, X + R, height - Y + R]`` clipped to the image. CALC rows without
    a centre (calcifications spread over the whole image) cannot be boxed: their image is
    left out and reported. Images are 200 um per pixel (recorded as ``spacing_mm`` 0.2), all
    MLO views; even numbers are left breasts, odd numbers right (Info.txt, note 1).
    Negatives (``include_negatives``) are the NORM images only: an image listed for a mass
    may hold calcifications nobody marked.
    """
    progress = or_no_progress(progress)
    root = check_source(source)
    out = Path(out_json)
    files = list(walk_files(root))
    if info_txt:
        info = Path(info_txt)
        if not info.is_file():
            raise DatasetError(f"mini-MIAS Info.txt not found: {info}")
    else:
        found = [p for p in files if p.name.lower() == "info.txt"]
        if not found:
            raise DatasetError(f"no Info.txt under {root} (pass info_txt)")
        info = found[0]
    pgms = {p.stem.lower(): p for p in files if p.suffix.lower() == ".pgm"}
    builder = CocoBuilder("mini-mias", root, out, strict=strict, include_negatives=include_negatives)
    builder.label_source = "MIAS severity B/M"
    builder.report.notes.append(
        "mini-MIAS centres use a bottom-left origin: stored y = height - Y; box = centre +- radius, clipped; "
        f"spacing {MINI_MIAS_SPACING_MM} mm"
    )
    try:
        lines = info.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read {info}: {exc}") from exc
    rows: list[tuple[int, list[str]]] = []
    for number, text in enumerate(lines, start=1):
        tokens = text.split()
        if not tokens or tokens[0].startswith("#") or tokens[0].upper() == "REFNUM":
            continue
        if not re.match(r"^mdb\d+$", tokens[0], re.IGNORECASE):
            builder.skip(f"{info.name} line {number}", f"not a MIAS row: {text.strip()[:60]!r}")
            continue
        rows.append((number, tokens))
    if not rows:
        raise DatasetError(f"{info}: no MIAS rows (expected lines like 'mdb209 G CALC M 647 503 87')")
    for n, (number, tokens) in enumerate(rows):
        progress(0.05 + 0.9 * n / len(rows), f"mini-MIAS {tokens[0]}")
        where = f"{info.name} line {number}"
        ref = tokens[0].lower()
        klass = tokens[2].upper() if len(tokens) > 2 else ""
        if klass != "CALC" and not (include_negatives and klass == "NORM"):
            continue
        path = pgms.get(ref)
        if path is None:
            builder.skip(where, f"image {ref}.pgm not found under {root}")
            continue
        try:
            width, height = pgm_size(path)
        except ValueError as exc:
            builder.skip(where, f"{path.name}: {exc}")
            continue
        digits = int(re.sub(r"\D", "", ref))
        key = builder.image(
            str(path.resolve()),
            path,
            width,
            height,
            spacing_mm=MINI_MIAS_SPACING_MM,
            laterality="L" if digits % 2 == 0 else "R",
            view="MLO",
            background_tissue=tokens[1].upper() if len(tokens) > 1 else None,
            dataset="mini-MIAS",
        )
        if klass != "CALC":
            continue
        severity = tokens[3].upper() if len(tokens) > 3 else ""
        label = {"B": "benign", "M": "malignant"}.get(severity)
        if label is None:
            builder.fail_lesion(key, where, f"severity {severity or 'missing'!r} is not B or M")
            continue
        try:
            if len(tokens) < 7:
                raise ValueError("too few columns")
            x, y, r = (float(t) for t in tokens[4:7])
        except ValueError:
            builder.fail_lesion(
                key,
                where,
                "CALC row without centre and radius (calcifications spread over the image; Info.txt note 4)",
            )
            continue
        if r <= 0:
            builder.fail_lesion(key, where, f"radius {tokens[6]} is not positive")
            continue
        y_stored = height - y  # bottom-left origin -> top-left stored rows
        builder.add_lesion(
            key,
            (x - r, y_stored - r, x + r, y_stored + r),
            label,
            where,
            severity=severity,
            centre_info_txt=[x, y],
            radius_px=r,
        )
    progress(0.97, "writing COCO")
    report = builder.write([info])
    progress(1.0, "done")
    return report
