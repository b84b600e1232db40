"""Factories for real test images: DICOM (any transfer syntax we can encode), PNG, TIFF, PGM,
JPEG and SimpleITK formats, written to disk so that tests exercise the real readers.

Import from a test in Testing/ as ``from _reader_helpers import make_mammo_dicom`` (pytest puts
the test file's folder on ``sys.path``; the reader tests also insert it explicitly).

Nothing here is mocked: a DICOM written by :func:`make_mammo_dicom` is a standard-conforming
Part 10 file that pydicom, dcmtk or Slicer read like any other.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    generate_uid,
)

#: SOP classes per (modality, presentation intent).
_SOP_CLASSES = {
    ("MG", "FOR PRESENTATION"): "1.2.840.10008.5.1.4.1.1.1.2",
    ("MG", "FOR PROCESSING"): "1.2.840.10008.5.1.4.1.1.1.2.1",
    ("DX", "FOR PRESENTATION"): "1.2.840.10008.5.1.4.1.1.1.1",
    ("DX", "FOR PROCESSING"): "1.2.840.10008.5.1.4.1.1.1.1.1",
    ("CR", None): "1.2.840.10008.5.1.4.1.1.1",
    ("CT", None): "1.2.840.10008.5.1.4.1.1.2",
    ("MR", None): "1.2.840.10008.5.1.4.1.1.4",
    ("US", None): "1.2.840.10008.5.1.4.1.1.6.1",
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def mammo_like(
    rows: int = 256, cols: int = 192, *, side: str = "L", dtype: Any = np.uint16, seed: int = 0
) -> np.ndarray:
    """A synthetic MONOCHROME2 mammogram: a textured half-ellipse breast whose chest wall is on
    ``side`` ("L" = column 0, the DICOM convention for a left breast), a dark background, a
    bright burned-in label in the opposite upper corner and a thin bright film edge on top.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    cy, ry, rx = rows / 2.0, rows * 0.42, cols * 0.62
    inside = ((yy - cy) / ry) ** 2 + (xx / rx) ** 2 <= 1.0
    info = np.iinfo(dtype)
    top = min(int(info.max), 4095 if info.max > 255 else 255)
    img = rng.integers(0, max(2, top // 40), size=(rows, cols)).astype(np.float64)
    tissue = 0.55 + 0.25 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 0.05 * rng.standard_normal((rows, cols))
    img[inside] = top * np.clip(tissue[inside], 0.2, 0.95)
    # Burned-in label far from the chest wall, and a film edge along the top border.
    lr, lc = max(1, rows // 12), max(1, cols // 6)
    img[rows // 20 : rows // 20 + lr, cols - lc - cols // 20 : cols - cols // 20] = top
    img[0:2, :] = top
    if side.upper().startswith("R"):
        img = img[:, ::-1]
    return np.ascontiguousarray(np.clip(img, info.min, info.max).astype(dtype))


# ---------------------------------------------------------------------------------------------
# JPEG lossless (process 14, selection value 1) encoder: pydicom has no encoder for it, and
# it is the most common compressed transfer syntax of real mammograms.
# ---------------------------------------------------------------------------------------------


class _BitWriter:
    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def write(self, value: int, nbits: int) -> None:
        for i in range(nbits - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0x00)  # byte stuffing
                self.acc, self.n = 0, 0

    def flush(self) -> bytes:
        if self.n:
            self.write((1 << (8 - self.n)) - 1, 8 - self.n)  # pad with 1-bits
        return bytes(self.out)


def encode_jpeg_lossless(pixels: np.ndarray, precision: Optional[int] = None) -> bytes:
    """Encode a 2-D unsigned image as a JPEG lossless (ITU T.81 process 14, SV1) bitstream.

    Huffman table: the 17 difference categories with fixed 5-bit codes (valid, not optimal).
    Pure Python, so keep test images small (a 96x96 image takes ~50 ms).
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.unsignedinteger):
        raise ValueError("encode_jpeg_lossless needs a 2-D unsigned integer array")
    rows, cols = arr.shape
    p = precision or (8 if arr.dtype.itemsize == 1 else 16)
    a = arr.astype(np.int64)
    pred = np.empty_like(a)
    pred[0, 0] = 1 << (p - 1)
    pred[0, 1:] = a[0, :-1]
    pred[1:, 0] = a[:-1, 0]
    pred[1:, 1:] = a[1:, :-1]
    diff = (a - pred) % 65536
    diff = np.where(diff > 32768, diff - 65536, diff)
    bw = _BitWriter()
    for d in diff.ravel().tolist():
        mag = abs(d)
        ssss = 16 if mag == 32768 else mag.bit_length()
        bw.write(ssss, 5)
        if 0 < ssss < 16:
            bw.write(d if d > 0 else d + (1 << ssss) - 1, ssss)
    scan = bw.flush()
    sof = struct.pack(">HBHHB", 11, p, rows, cols, 1) + bytes([1, 0x11, 0])
    bits = [0] * 16
    bits[4] = 17
    dht_body = bytes([0x00]) + bytes(bits) + bytes(range(17))
    dht = struct.pack(">H", 2 + len(dht_body)) + dht_body
    sos = struct.pack(">HB", 8, 1) + bytes([1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + b"\xff\xc3" + sof + b"\xff\xc4" + dht + b"\xff\xda" + sos + scan + b"\xff\xd9"


# ---------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------


def make_mammo_dicom(
    path: Union[str, Path],
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    spacing: Optional[Sequence[float]] = (0.1, 0.1),
    laterality: Optional[str] = "R",
    view: Optional[str] = "CC",
    transfer_syntax: Union[str, UID] = ExplicitVRLittleEndian,
    presentation_intent: Optional[str] = "FOR PRESENTATION",
    modality: str = "MG",
    **extra_tags: Any,
) -> Path:
    """Write ``pixels`` as a single-frame DICOM image and return its path.

    ``pixels`` is 2-D (grey) or (rows, cols, 3) (RGB); uint8/uint16/int16. ``spacing`` goes to
    ImagerPixelSpacing; ``laterality`` to ImageLaterality; ``view`` to ViewPosition; None omits
    a tag. ``extra_tags`` are set by keyword (``PatientID="..."``); a value of None deletes the
    tag. ``transfer_syntax`` may be any syntax pydicom or its plug-ins encode, or JPEG lossless
    (SV1), encoded by :func:`encode_jpeg_lossless`.
    """
    path = Path(path)
    arr = np.ascontiguousarray(pixels)
    if arr.ndim not in (2, 3):
        raise ValueError("pixels must be 2-D or (rows, cols, 3)")
    ts = UID(str(transfer_syntax))
    sop_class = (
        _SOP_CLASSES.get((modality, presentation_intent)) or _SOP_CLASSES.get((modality, None)) or _SECONDARY_CAPTURE
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.Manufacturer = "MicrocalcAI test factory"
    ds.PatientID = "TEST0001"
    ds.PatientName = "Test^Reader"
    if presentation_intent is not None:
        ds.PresentationIntentType = presentation_intent
    if spacing is not None:
        ds.ImagerPixelSpacing = [f"{float(s):.6g}" for s in spacing]
    if laterality is not None:
        ds.ImageLaterality = laterality
    if view is not None:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.SamplesPerPixel = 1 if arr.ndim == 2 else int(arr.shape[2])
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric if arr.ndim == 2 else "RGB"
    bits = arr.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if np.issubdtype(arr.dtype, np.signedinteger) else 0

    for keyword, value in extra_tags.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)

    if ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.PixelData = arr.tobytes()
    elif ts == JPEGLosslessSV1:
        if arr.ndim != 2:
            raise ValueError("the JPEG lossless test encoder handles grey images only")
        ds.PixelData = encapsulate([encode_jpeg_lossless(arr, precision=int(ds.BitsStored))])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = arr.tobytes()
        ds.compress(ts, arr)
    ds.save_as(path, enforce_file_format=True)
    return path


def bundled_dicom(name: str) -> Path:
    """A DICOM file that ships inside the pydicom wheel (never downloads anything)."""
    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    if not path.is_file():
        raise FileNotFoundError(f"pydicom does not bundle {name}")
    return path


# ---------------------------------------------------------------------------------------------
# Other formats
# ---------------------------------------------------------------------------------------------


def make_png(path: Union[str, Path], pixels: np.ndarray) -> Path:
    """Write an 8-bit, 16-bit grey or RGB PNG with Pillow."""
    from PIL import Image

    path = Path(path)
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="PNG")
    return path


def make_jpeg(path: Union[str, Path], pixels: np.ndarray, quality: int = 95) -> Path:
    """Write an 8-bit grey or RGB baseline JPEG (lossy) with Pillow."""
    from PIL import Image

    path = Path(path)
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="JPEG", quality=quality)
    return path


def make_pgm(path: Union[str, Path], pixels: np.ndarray) -> Path:
    """Write a binary PGM (P5), 8-bit or 16-bit big-endian, by hand (the format is 3 lines)."""
    path = Path(path)
    arr = np.ascontiguousarray(pixels)
    maxval = 255 if arr.dtype == np.uint8 else 65535
    body = arr.astype(">u2").tobytes() if maxval > 255 else arr.tobytes()
    path.write_bytes(f"P5\n{arr.shape[1]} {arr.shape[0]}\n{maxval}\n".encode("ascii") + body)
    return path


def make_tiff(
    path: Union[str, Path],
    pixels: np.ndarray,
    *,
    spacing_mm: Optional[tuple[float, float]] = None,
    unit: str = "CENTIMETER",
    photometric: str = "minisblack",
    compression: Optional[str] = None,
) -> Path:
    """Write a TIFF with tifffile; ``spacing_mm`` (row, col) becomes resolution tags in ``unit``."""
    import tifffile

    path = Path(path)
    kwargs: dict[str, Any] = {"photometric": photometric}
    if compression:
        kwargs["compression"] = compression
    if spacing_mm is not None:
        per_mm = {"CENTIMETER": 10.0, "INCH": 25.4, "NONE": 1.0}[unit]
        kwargs["resolution"] = (per_mm / spacing_mm[1], per_mm / spacing_mm[0])
        kwargs["resolutionunit"] = unit
    tifffile.imwrite(path, np.ascontiguousarray(pixels), **kwargs)
    return path


def make_sitk_image(
    path: Union[str, Path], pixels: np.ndarray, spacing_mm: Optional[tuple[float, float]] = (0.07, 0.07)
) -> Path:
    """Write a 2-D (or 3-D, for rejection tests) NRRD / NIfTI / MHA file with SimpleITK.

    ``spacing_mm`` is (row, col) for 2-D input; the format follows the suffix of ``path``.
    """
    import SimpleITK as sitk

    path = Path(path)
    img = sitk.GetImageFromArray(np.ascontiguousarray(pixels))
    if spacing_mm is not None:
        sp = [float(spacing_mm[1]), float(spacing_mm[0])] + [1.0] * (img.GetDimension() - 2)
        img.SetSpacing(sp)
    sitk.WriteImage(img, str(path))
    return path
