"""The overlay PNG of one image: boxes coloured by class, specks outlined, the image risk.

Drawn on the normalised stored-frame image, downsampled to a bounded size, and written
atomically like every output.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from MicrocalcAI.core.atomic import atomic_write_bytes
from MicrocalcAI.core.errors import OutputError
from MicrocalcAI.core.outputs.paths import PathLike, output_path
from MicrocalcAI.core.records import ImageFindings, Lesion

__all__ = [
    "CLASS_COLOURS",
    "OOD_COLOUR",
    "SPECK_COLOUR",
    "TEXT_BACKGROUND",
    "ood_warning_lines",
    "render_overlay",
    "write_overlay",
]

#: Overlay colours (RGB): boxes by class, speck outlines, label text background.
CLASS_COLOURS = {"malignant": (255, 0, 0), "benign": (255, 255, 0)}
SPECK_COLOUR = (0, 255, 255)
TEXT_BACKGROUND = (0, 0, 0)
#: Colour of the "unlike the training data" warning (magenta: unlike any box or risk colour).
OOD_COLOUR = (255, 64, 255)


def _font(size_px: int) -> Any:
    """Pillow's bundled scalable font (no system fonts needed); bitmap font on old Pillow."""
    try:
        return ImageFont.load_default(size=size_px)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _grey_overlay_base(stored01: np.ndarray, size: tuple[int, int]) -> Image.Image:
    # One float32 copy worked on in place: a film's stored image is ~50 MB, and four
    # temporaries of that size (nan_to_num, clip, * 255, round) set the batch's memory peak.
    grey = np.nan_to_num(np.asarray(stored01, dtype=np.float32), copy=True)
    np.clip(grey, 0.0, 1.0, out=grey)
    np.multiply(grey, np.float32(255), out=grey)
    np.round(grey, out=grey)
    img = Image.fromarray(grey.astype(np.uint8))
    del grey
    if img.size != size:
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img.convert("RGB")


def _speck_outline_points(
    lesion: Lesion, sy: float, sx: float, out_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Overlay pixels of a ring just outside each speck, from the speck mask.

    Mask pixels are mapped to the overlay by their centres (a speck never vanishes when the
    overlay is downsampled), then the one-pixel ring around them is the outline.
    """
    rr, cc = np.nonzero(np.asarray(lesion.speck_mask, dtype=bool))
    if rr.size == 0:
        return rr, cc
    oy = np.floor((rr + lesion.mask_origin[0] + 0.5) * sy).astype(np.int64)
    ox = np.floor((cc + lesion.mask_origin[1] + 0.5) * sx).astype(np.int64)
    y0, x0 = int(oy.min()) - 2, int(ox.min()) - 2
    local = np.zeros((int(oy.max()) - y0 + 3, int(ox.max()) - x0 + 3), dtype=bool)
    local[oy - y0, ox - x0] = True
    ring = ndi.binary_dilation(local, structure=np.ones((3, 3), dtype=bool)) & ~local
    ry, rx = np.nonzero(ring)
    ry, rx = ry + y0, rx + x0
    inside = (ry >= 0) & (rx >= 0) & (ry < out_shape[0]) & (rx < out_shape[1])
    return ry[inside], rx[inside]


def _draw_label(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: tuple[int, int, int], font: Any
) -> None:
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=TEXT_BACKGROUND)
    draw.text(xy, text, fill=colour, font=font)


def ood_warning_lines(f: ImageFindings) -> list[str]:
    """The overlay's warning for an image flagged as unlike the training data (else none)."""
    if f.ood is None or not f.ood.flagged:
        return []
    lines = [
        f"WARNING: image unlike the training data (OOD score {f.ood.score:.2f} >= {f.ood.threshold:.2f})",
        "risk is INDETERMINATE: the model cannot vouch for these marks",
    ]
    lines += [f"  - {reason}" for reason in f.ood.reasons]
    return lines


def render_overlay(f: ImageFindings, stored01: np.ndarray, *, max_size: int = 2048) -> Image.Image:
    """The overlay as a Pillow RGB image (see :func:`write_overlay`)."""
    image = np.asarray(stored01)
    if image.ndim != 2 or tuple(image.shape) != tuple(f.image_shape):
        raise OutputError(f"overlay of {f.name!r}: image shape {image.shape} differs from findings {f.image_shape}")
    if max_size < 16:
        raise OutputError(f"overlay max_size must be at least 16 pixels, got {max_size}")
    rows, cols = int(image.shape[0]), int(image.shape[1])
    scale = min(1.0, max_size / max(rows, cols))
    out_w, out_h = max(1, int(round(cols * scale))), max(1, int(round(rows * scale)))
    sx, sy = out_w / cols, out_h / rows
    canvas = _grey_overlay_base(image, (out_w, out_h))
    pixels = np.asarray(canvas).copy()
    for lesion in f.lesions:
        ry, rx = _speck_outline_points(lesion, sy, sx, (out_h, out_w))
        pixels[ry, rx] = SPECK_COLOUR
    canvas = Image.fromarray(pixels)
    draw = ImageDraw.Draw(canvas)
    long_side = max(out_w, out_h)
    line = max(2, int(round(long_side / 700)))
    font = _font(max(12, int(round(long_side / 90))))
    # Draw the least suspicious first so the most suspicious box ends up on top.
    for lesion in sorted(f.lesions, key=lambda les: les.p_malignant):
        colour = CLASS_COLOURS.get(lesion.label, (255, 255, 255))
        x0, y0, x1, y1 = lesion.box_px
        box = (x0 * sx, y0 * sy, max(x1 * sx - 1, x0 * sx), max(y1 * sy - 1, y0 * sy))
        draw.rectangle(box, outline=colour, width=line)
        text = f"L{lesion.id} {lesion.label} {lesion.p_malignant:.2f}"
        text_h = draw.textbbox((0, 0), text, font=font)[3]
        ty = box[1] - text_h - line - 4 if box[1] - text_h - line - 4 >= 0 else box[3] + line + 2
        _draw_label(draw, (box[0], ty), text, colour, font)
    legend = [
        (f"Image risk {f.risk.probability:.2f} ({f.risk.category})", (255, 255, 255)),
        ("red box: malignant lesion", CLASS_COLOURS["malignant"]),
        ("yellow box: benign lesion", CLASS_COLOURS["benign"]),
        ("cyan: calcification specks", SPECK_COLOUR),
        ("number: P(malignant)  -  research use only", (255, 255, 255)),
    ]
    if f.spacing_source == "assumed":
        legend.append((f"WARNING: pixel spacing unknown, assumed {f.spacing_mm[1]:g} mm", (255, 160, 0)))
    if f.warnings:
        legend.append((f"{len(f.warnings)} warning(s): see {f.name}.json", (255, 160, 0)))
    legend += [(text, OOD_COLOUR) for text in ood_warning_lines(f)]
    y = 4.0
    for text, colour in legend:
        _draw_label(draw, (6.0, y), text, colour, font)
        y = draw.textbbox((6.0, y), text, font=font)[3] + 6
    return canvas


def write_overlay(f: ImageFindings, stored01: np.ndarray, out_dir: PathLike, *, max_size: int = 2048) -> Path:
    """Write ``<name>_overlay.png``: the image with boxes, labels, specks and the image risk.

    ``stored01`` is the normalised stored-frame image (bright = dense) the findings refer to;
    it is downsampled so its long side is at most ``max_size`` pixels, keeping the pixel
    aspect of the stored grid so overlay coordinates are stored coordinates times one factor.
    """
    path = output_path(out_dir, f.name, "_overlay.png")
    buffer = io.BytesIO()
    # zlib level 1: on the 2048-pixel overlays of 4 real films, 0.062 s to encode against 0.170 s
    # at Pillow's default level 6 (median of 12, interleaved), files 14% larger
    # (docs/performance.md); the pixels are the same.
    render_overlay(f, stored01, max_size=max_size).save(buffer, format="PNG", optimize=False, compress_level=1)
    return atomic_write_bytes(path, buffer.getvalue())
