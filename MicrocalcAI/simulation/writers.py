"""Writers: DICOM MG (For Presentation, RLE Lossless), PNG, COCO annotations with speck masks as
RLE, and a contact sheet for a human look."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from MicrocalcAI.core.atomic import atomic_write_bytes
from MicrocalcAI.core.errors import DatasetError
from MicrocalcAI.datasets.coco import LABEL_IDS, coco_bbox, parse_coco
from MicrocalcAI.simulation.config import PathLike, SimulatedImageMeta, SimulatedLesion

__all__ = [
    "MG_FOR_PRESENTATION_SOP_CLASS",
    "deterministic_uid",
    "build_dicom",
    "write_png",
    "write_dicom",
    "mask_to_coco_rle",
    "coco_rle_to_mask",
    "lesion_full_mask",
    "read_display_image",
    "write_contact_sheet",
]


#: Digital Mammography X-Ray Image Storage - For Presentation.
MG_FOR_PRESENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"


_UID_NAMESPACE = "MicrocalcAI-simulate-v1"


#: Standard DICOM mammography Patient Orientation with the chest wall at the named edge.
_PATIENT_ORIENTATION = {
    ("L", "CC"): ["A", "R"],
    ("R", "CC"): ["P", "L"],
    ("L", "MLO"): ["A", "FR"],
    ("R", "MLO"): ["P", "FL"],
}


_VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}


def deterministic_uid(*parts: object) -> str:
    """A DICOM UID derived from the seed and role, so a re-run writes identical files."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[_UID_NAMESPACE, *[str(p) for p in parts]]))


def build_dicom(
    pixels: np.ndarray,
    meta: SimulatedImageMeta,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    instance_number: int = 1,
    description: str = "MicrocalcAI simulation",
):
    """A Digital Mammography For-Presentation dataset (RLE Lossless) for one simulated image."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = UID(MG_FOR_PRESENTATION_SOP_CLASS)
    fm.MediaStorageSOPInstanceUID = UID(sop_uid)
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MG_FOR_PRESENTATION_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "MicrocalcAI simulator"
    ds.SeriesDescription = description
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.PatientName = patient_id
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.BodyPartExamined = "BREAST"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImageLaterality = meta.laterality
    ds.Laterality = meta.laterality
    ds.ViewPosition = meta.view
    code, meaning = _VIEW_CODES[meta.view]
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "SCT", meaning
    ds.ViewCodeSequence = DicomSequence([item])
    ds.PatientOrientation = _PATIENT_ORIENTATION[(meta.laterality, meta.view)]
    ds.ImagerPixelSpacing = [f"{meta.spacing_mm:.6g}", f"{meta.spacing_mm:.6g}"]
    ds.PixelSpacing = [f"{meta.spacing_mm:.6g}", f"{meta.spacing_mm:.6g}"]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.EstimatedRadiographicMagnificationFactor = "1.0"
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = meta.photometric
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    eight = meta.bits_stored <= 8
    ds.BitsAllocated = 8 if eight else 16
    ds.BitsStored = meta.bits_stored
    ds.HighBit = meta.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    maxval = (1 << meta.bits_stored) - 1
    ds.WindowCenter, ds.WindowWidth = f"{maxval / 2:.1f}", f"{maxval + 1}"
    ds.VOILUTFunction = "LINEAR"
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8 if eight else np.uint16).tobytes()
    # Lossless: keep our deterministic SOP Instance UID (pydicom would otherwise make a new one).
    ds.compress(RLELossless, generate_instance_uid=False)
    return ds


def write_png(path: PathLike, pixels: np.ndarray, meta: SimulatedImageMeta) -> Path:
    """Write the image as a greyscale PNG, atomically: 8-bit files as 8-bit PNG, 12-16-bit
    files as 16-bit PNG holding the stored values. PNG has no photometric interpretation and
    readers take bright = dense, so MONOCHROME1 images are written inverted back."""
    from io import BytesIO

    from PIL import Image

    maxval = (1 << meta.bits_stored) - 1
    values = (maxval - pixels.astype(np.int64)) if meta.photometric == "MONOCHROME1" else pixels.astype(np.int64)
    if meta.bits_stored <= 8:
        img = Image.fromarray(values.astype(np.uint8), mode="L")
    else:
        img = Image.fromarray(values.astype(np.uint16))  # mode I;16
    buf = BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def write_dicom(path: PathLike, ds) -> Path:
    """Write a dataset atomically (temp file in the same folder, then rename)."""
    from io import BytesIO

    path = Path(path)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def mask_to_coco_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major runs, first run = background), as pycocotools reads."""
    flat = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    change = np.nonzero(np.diff(flat))[0] + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def coco_rle_to_mask(rle: dict) -> np.ndarray:
    """Inverse of :func:`mask_to_coco_rle`."""
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for c in rle["counts"]:
        if val:
            flat[pos : pos + c] = True
        pos += c
        val = not val
    return flat.reshape((w, h)).T


def lesion_full_mask(lesion: SimulatedLesion, shape: tuple[int, int]) -> np.ndarray:
    """The lesion's speck mask pasted into a full-image boolean array."""
    full = np.zeros(shape, dtype=bool)
    r0, c0 = lesion.mask_origin
    h, w = lesion.speck_mask.shape
    full[r0 : r0 + h, c0 : c0 + w] = lesion.speck_mask
    return full


def _coco_annotation(ann_id: int, image_id: int, lesion: SimulatedLesion, shape: tuple[int, int]) -> dict:
    full = lesion_full_mask(lesion, shape)
    bbox, area = coco_bbox(lesion.box_px)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": LABEL_IDS[lesion.category],
        "bbox": bbox,
        "area": area,
        "iscrowd": 0,
        "segmentation": mask_to_coco_rle(full),
        "n_specks": lesion.n_specks,
        "morphology": lesion.morphology,
        "distribution": lesion.distribution,
        "mask_area_px": int(full.sum()),
        "mu_calc_per_mm": round(lesion.mu_calc_per_mm, 4),
    }


def read_display_image(path: PathLike, bits_stored: Optional[int] = None) -> np.ndarray:
    """Float image in [0, 1], bright = dense, whatever the photometric interpretation.

    Simulated PNGs are already bright = dense; ``bits_stored`` (from the COCO entry) scales them.
    """
    if Path(path).suffix.lower() == ".png":
        from PIL import Image

        with Image.open(path) as img:
            a = np.asarray(img).astype(np.float32)
        maxval = float((1 << int(bits_stored)) - 1) if bits_stored else (255.0 if a.max() <= 255 else 65535.0)
        return np.clip(a / maxval, 0.0, 1.0)
    import pydicom

    ds = pydicom.dcmread(str(path))
    a = ds.pixel_array.astype(np.float32)
    maxval = float((1 << int(ds.BitsStored)) - 1)
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":
        a = maxval - a
    return a / maxval


def write_contact_sheet(
    coco_json: PathLike, png_path: PathLike, *, max_images: int = 48, tile_px: int = 256, columns: int = 8
) -> Path:
    """A grid of downsampled images with lesion boxes (red malignant, green benign) for a human look."""
    from PIL import Image, ImageDraw

    imgs = parse_coco(coco_json)[:max_images]  # the project's one COCO reader
    if not imgs:
        raise DatasetError(f"{coco_json} has no images")
    ncols = min(columns, len(imgs))
    nrows = math.ceil(len(imgs) / ncols)
    sheet = Image.new("RGB", (ncols * tile_px, nrows * tile_px), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)

    def outline(ox: int, oy: int, scale: float, box: np.ndarray, colour: tuple[int, int, int]) -> None:
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle(
            [ox + x0 * scale - 1, oy + y0 * scale - 1, ox + x1 * scale + 1, oy + y1 * scale + 1],
            outline=colour,
            width=1,
        )

    for k, im in enumerate(imgs):
        a = read_display_image(im.path, im.extra.get("bits_stored"))
        mask_vals = a[a > 0.05]
        lo, hi = np.percentile(mask_vals, [1, 99.5]) if mask_vals.size else (0.0, 1.0)
        a8 = (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
        scale = tile_px / max(a.shape)
        thumb = Image.fromarray(a8).resize(
            (max(1, int(a.shape[1] * scale)), max(1, int(a.shape[0] * scale))), Image.Resampling.BILINEAR
        )
        ox, oy = (k % ncols) * tile_px, (k // ncols) * tile_px
        sheet.paste(thumb.convert("RGB"), (ox, oy))
        for box, label in zip(im.boxes_stored, im.labels):
            outline(ox, oy, scale, box, (255, 0, 0) if int(label) == LABEL_IDS["malignant"] else (0, 255, 0))
        for box in im.hard_negatives_stored:  # hard negatives (not lesions): cyan
            outline(ox, oy, scale, box, (0, 200, 255))
        label = (
            f"{im.extra.get('laterality', '')}{im.extra.get('view', '')} {str(im.extra.get('photometric', ' '))[-1]}"
        )
        draw.text((ox + 3, oy + 3), label, fill=(255, 255, 0))
    png_path = Path(png_path)
    from io import BytesIO

    buf = BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(png_path, buf.getvalue())
    return png_path
