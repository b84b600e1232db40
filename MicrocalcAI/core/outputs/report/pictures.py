"""The report's pictures: each view with its marks, and a zoomed crop of every lesion.

The findings JSON holds coordinates, not pixels, so the image is read again from the path it
records (:func:`load_view`). Views are mirrored where needed so that the breasts hang back to
back (right breast with its chest wall on the right, left breast with it on the left), as a
radiologist hangs them; marks go through the same mapping (:class:`Frame`), so a box is
always drawn where the lesion is.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage as ndi

from MicrocalcAI.core.errors import InputError, MicrocalcAIError
from MicrocalcAI.core.outputs.overlay import CLASS_COLOURS, SPECK_COLOUR
from MicrocalcAI.core.records import ImageFindings, Lesion

__all__ = [
    "Frame",
    "ReportInputError",
    "ViewPixels",
    "data_uri",
    "lesion_crop",
    "load_view",
    "view_picture",
]

#: Colour of a box whose class is neither benign nor malignant (a retrained model's own class).
OTHER_COLOUR = (255, 255, 255)


class ReportInputError(InputError):
    """The image a report needs cannot be read back (moved, deleted, replaced)."""


@dataclass
class ViewPixels:
    """An image as the report shows it: normalised stored pixels, and whether to mirror them."""

    image01: np.ndarray  # float32 (rows, columns) in [0, 1], bright = dense, stored frame
    mirror: bool  # True: shown mirrored left-right so the breasts hang back to back
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Frame:
    """Stored-pixel coordinates -> picture pixels: optional mirror, then crop origin, then scale."""

    columns: int  # stored columns (mirroring is x -> columns - x)
    mirror: bool
    x0: float  # picture origin in mirrored stored coordinates
    y0: float
    scale: float  # picture pixels per stored pixel
    size: tuple[int, int]  # picture (width, height)

    def points(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if self.mirror:
            x = self.columns - x
        return (x - self.x0) * self.scale, (y - self.y0) * self.scale

    def box(self, box_px: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        u, v = self.points(np.array([box_px[0], box_px[2]]), np.array([box_px[1], box_px[3]]))
        return float(u.min()), float(v.min()), float(u.max()), float(v.max())

    def to_stored(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = u / self.scale + self.x0
        y = v / self.scale + self.y0
        return (self.columns - x if self.mirror else x), y


def load_view(f: ImageFindings, *, assumed_input_spacing_mm: float = 0.05) -> ViewPixels:
    """Read the input again and normalise it exactly as the analysis did.

    Raises :class:`ReportInputError` with what to do when the file is gone or is no longer the
    image the findings describe (different size); a changed file of the same size gets a
    warning, since its marks may no longer match.
    """
    from MicrocalcAI.core.pipeline import file_fingerprint
    from MicrocalcAI.core.read import read_mammogram
    from MicrocalcAI.core.standardise import chest_wall_on_left, normalised_stored

    if not f.source:
        raise ReportInputError(
            f"{f.name}: the findings record no input file (an in-memory image); the report needs its pixels"
        )
    path = Path(f.source)
    if not path.is_file():
        relative = "" if path.is_absolute() else f" (a relative path, looked for from {Path.cwd()})"
        raise ReportInputError(
            f"{f.name}: input {path} is not there any more (moved or deleted?){relative}; the report re-reads "
            "the image for its pictures: put the file back at that path, or run detect again on its new location"
        )
    warnings: list[str] = []
    if f.input_fingerprint and file_fingerprint(path) != f.input_fingerprint:
        warnings.append(f"{path.name} changed since it was analysed (size or time differ): the marks may not match")
    try:
        mammogram = read_mammogram(path)
    except MicrocalcAIError as exc:
        raise ReportInputError(f"{f.name}: cannot read {path} again: {exc}") from exc
    if mammogram.shape != tuple(f.image_shape):
        raise ReportInputError(
            f"{f.name}: {path} is now {mammogram.shape[0]}x{mammogram.shape[1]} pixels but was analysed at "
            f"{f.image_shape[0]}x{f.image_shape[1]}: it is not the same image; run detect again"
        )
    mammogram = replace(
        mammogram, spacing_mm=(float(f.spacing_mm[0]), float(f.spacing_mm[1])), spacing_source=f.spacing_source
    )
    image01, mask = normalised_stored(mammogram, assumed_input_spacing_mm=assumed_input_spacing_mm)
    side = (f.laterality or "").strip().upper()
    mirror = False
    if side in ("L", "R") and mask.any():
        # Back to back: a right breast's chest wall on the right, a left breast's on the left.
        mirror = chest_wall_on_left(mask) != (side == "L")
    return ViewPixels(image01=np.asarray(image01, dtype=np.float32), mirror=mirror, warnings=warnings)


# --------------------------------------------------------------------------- drawing


def _font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size_px)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _grey(image01: np.ndarray) -> Image.Image:
    grey = np.clip(np.nan_to_num(np.asarray(image01, dtype=np.float32)), 0.0, 1.0)
    return Image.fromarray(np.round(grey * 255).astype(np.uint8))


def class_colour(label: str) -> tuple[int, int, int]:
    return CLASS_COLOURS.get(label, OTHER_COLOUR)


def _speck_mask(lesion: Lesion, frame: Frame) -> np.ndarray:
    """Picture pixels covered by the lesion's specks.

    Mask pixel centres are mapped forward (a speck never vanishes when the picture is smaller
    than the image) and, when the picture is larger, every picture pixel also looks its
    centre up in the mask (an enlarged speck is filled, not dotted).
    """
    width, height = frame.size
    out = np.zeros((height, width), dtype=bool)
    mask = np.asarray(lesion.speck_mask, dtype=bool)
    rr, cc = np.nonzero(mask)
    if rr.size == 0:
        return out
    r0, c0 = lesion.mask_origin
    u, v = frame.points(cc + c0 + 0.5, rr + r0 + 0.5)
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    inside = (iu >= 0) & (iv >= 0) & (iu < width) & (iv < height)
    out[iv[inside], iu[inside]] = True
    if frame.scale > 1.0:
        gv, gu = np.mgrid[0:height, 0:width]
        x, y = frame.to_stored(gu + 0.5, gv + 0.5)
        col = np.floor(x).astype(np.int64) - c0
        row = np.floor(y).astype(np.int64) - r0
        ok = (row >= 0) & (col >= 0) & (row < mask.shape[0]) & (col < mask.shape[1])
        out[ok] |= mask[row[ok], col[ok]]
    return out


def _draw_specks(pixels: np.ndarray, lesions: list[Lesion], frame: Frame, thickness: int) -> None:
    """Outline the specks in cyan (a ring just outside them), in place."""
    covered = np.zeros(pixels.shape[:2], dtype=bool)
    for lesion in lesions:
        covered |= _speck_mask(lesion, frame)
    if covered.any():
        ring = ndi.binary_dilation(covered, structure=np.ones((3, 3), bool), iterations=thickness) & ~covered
        pixels[ring] = SPECK_COLOUR


def _tag(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: tuple[int, int, int], font) -> None:
    """A number on a filled square of the class colour, readable on any background."""
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    pad = max(2, (bottom - top) // 5)
    draw.rectangle((left - pad, top - pad, right + pad, bottom + pad), fill=colour)
    draw.text(xy, text, fill=(0, 0, 0), font=font)


def view_picture(f: ImageFindings, view: ViewPixels, *, max_size: int = 1400) -> Image.Image:
    """The whole view, long side at most ``max_size`` pixels, boxes numbered as in the table."""
    rows, cols = view.image01.shape
    scale = min(1.0, max_size / max(rows, cols))
    size = (max(1, int(round(cols * scale))), max(1, int(round(rows * scale))))
    frame = Frame(columns=cols, mirror=view.mirror, x0=0.0, y0=0.0, scale=scale, size=size)
    base = view.image01[:, ::-1] if view.mirror else view.image01
    picture = _grey(base).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0).convert("RGB")
    pixels = np.asarray(picture).copy()
    _draw_specks(pixels, f.lesions, frame, thickness=1)
    picture = Image.fromarray(pixels)
    draw = ImageDraw.Draw(picture)
    long_side = max(size)
    line = max(2, int(round(long_side / 300)))
    font = _font(max(16, int(round(long_side / 22))))
    for lesion in sorted(f.lesions, key=lambda les: les.p_malignant):  # most suspicious on top
        colour = class_colour(lesion.label)
        x0, y0, x1, y1 = frame.box(lesion.box_px)
        # Boxes smaller than a few picture pixels are grown so they stay visible.
        grow = max(0.0, (3 * line - (x1 - x0)) / 2), max(0.0, (3 * line - (y1 - y0)) / 2)
        box = (x0 - grow[0], y0 - grow[1], x1 + grow[0], y1 + grow[1])
        draw.rectangle(box, outline=colour, width=line)
        text = str(lesion.id)
        text_h = draw.textbbox((0, 0), text, font=font)[3]
        ty = box[1] - text_h - 2 * line if box[1] - text_h - 2 * line >= 0 else box[3] + line + 2
        tx = min(max(box[0], 2.0), size[0] - draw.textlength(text, font=font) - 4)
        _tag(draw, (tx, ty), text, colour, font)
    return picture


def lesion_crop(
    f: ImageFindings, view: ViewPixels, lesion: Lesion, *, size: int = 320, min_field_mm: float = 8.0
) -> Image.Image:
    """A square close-up around one lesion: its box and its specks, enlarged.

    The field is 1.6 times the box's longer side, at least ``min_field_mm`` so a small
    cluster is seen in its surroundings, and moved inside the image at the borders.
    """
    rows, cols = view.image01.shape
    x0, y0, x1, y1 = lesion.box_px
    if view.mirror:
        x0, x1 = cols - x1, cols - x0
    spacing = max(min(f.spacing_mm), 1e-3)
    side = max(1.6 * max(x1 - x0, y1 - y0), min_field_mm / spacing, 16.0)
    side = min(side, float(max(rows, cols)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(cx - side / 2, 0.0), max(cols - side, 0.0))
    top = min(max(cy - side / 2, 0.0), max(rows - side, 0.0))
    c0, r0 = int(math.floor(left)), int(math.floor(top))
    c1, r1 = min(cols, int(math.ceil(left + side))), min(rows, int(math.ceil(top + side)))
    base = view.image01[:, ::-1] if view.mirror else view.image01
    window = base[r0:r1, c0:c1]
    scale = size / max(window.shape)
    out_size = (max(1, int(round(window.shape[1] * scale))), max(1, int(round(window.shape[0] * scale))))
    frame = Frame(columns=cols, mirror=view.mirror, x0=float(c0), y0=float(r0), scale=scale, size=out_size)
    picture = _grey(window).resize(out_size, Image.Resampling.LANCZOS).convert("RGB")
    pixels = np.asarray(picture).copy()
    _draw_specks(pixels, [lesion], frame, thickness=1)
    picture = Image.fromarray(pixels)
    draw = ImageDraw.Draw(picture)
    draw.rectangle(frame.box(lesion.box_px), outline=class_colour(lesion.label), width=max(2, size // 120))
    return picture


def data_uri(picture: Image.Image, *, fmt: str = "PNG", quality: int = 90) -> str:
    """The picture as a ``data:`` URI, so the HTML needs no other file."""
    buffer = io.BytesIO()
    if fmt.upper() == "JPEG":
        picture.convert("RGB").save(buffer, format="JPEG", quality=quality, subsampling=0)
        mime = "image/jpeg"
    else:
        picture.save(buffer, format="PNG", optimize=True)
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
