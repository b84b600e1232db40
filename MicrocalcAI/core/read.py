"""READ stage: turn a file, a folder entry or an array into a :class:`Mammogram` record.

This is where every input format is opened (DICOM MG/DX/CR in any transfer syntax pydicom
and its plug-ins decode, PNG/TIFF/PGM/JPEG, NRRD/NIfTI/MHA through SimpleITK, and numpy
arrays from Slicer) and where everything that is not a usable 2-D grey-scale projection
image is rejected with a one-line, user-facing error.

Principles:

* Pixels are returned exactly as stored (rows x columns, before any LUT, inversion or flip):
  interpreting them is the standardise stage's job, and keeping them raw lets every output be
  reported in the user's own pixel coordinates.
* Metadata is never guessed silently. Spacing, laterality and view each carry the place they
  came from (``*_source``) and anything doubtful is added to ``warnings``.
* Only :class:`~MicrocalcAI.core.errors.MicrocalcAIError` subclasses escape for any file content,
  so a batch can report a bad file in one line and go on. Sizes are checked from headers
  before decoding, so an absurd header cannot make us allocate gigabytes.
* Input files and arrays are never modified.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from MicrocalcAI.core.errors import InputError, MicrocalcAIError, NotAMammogramError, UnreadableFileError
from MicrocalcAI.core.records import Mammogram
from MicrocalcAI.core.spacing import SPACING_RANGE_MM, check_spacing, is_plausible

__all__ = [
    "ACCEPTED_MODALITIES",
    "MAGNIFICATION_RANGE",
    "MAX_PIXELS",
    "MIN_SIDE_PX",
    "NON_IMAGE_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "TIFF_SPACING_RANGE_MM",
    "PathLike",
    "dicom_row_spacing_mm",
    "estimate_laterality",
    "find_images",
    "has_dicom_preamble",
    "parse_laterality_view",
    "read_mammogram",
    "user_overrides",
]


log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: File name endings read by :func:`read_mammogram` (lower case; ``.nii.gz`` is a double suffix).
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {
        ".dcm", ".dicom", ".dic", ".ima",
        ".png",
        ".tif", ".tiff",
        ".pgm", ".pnm",
        ".jpg", ".jpeg",
        ".nrrd", ".nhdr",
        ".nii", ".nii.gz",
        ".mha", ".mhd",
    }
)  # fmt: skip

#: Suffixes that are certainly not images: skipped when expanding folders.
NON_IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {
        ".json", ".csv", ".tsv", ".txt", ".md", ".rst", ".xml", ".html", ".htm", ".pdf",
        ".py", ".pyc", ".log", ".yaml", ".yml", ".ini", ".cfg", ".toml", ".zip", ".tar",
        ".gz", ".bz2", ".xz", ".7z", ".xls", ".xlsx", ".doc", ".docx", ".raw", ".zraw",
        ".sh", ".bat", ".exe", ".db", ".sqlite", ".pth", ".pt", ".safetensors", ".mrml",
        ".mrb", ".seg", ".vtk", ".vtp", ".stl", ".obj", ".mp4", ".avi", ".mov",
    }
)  # fmt: skip

#: DICOM modalities of 2-D projection X-ray images that may hold a mammogram.
ACCEPTED_MODALITIES = ("MG", "DX", "CR")

MIN_SIDE_PX = 64
MAX_PIXELS = 120_000_000
#: TIFF resolution tags are often a meaningless 72 dpi: only trust values typical of mammograms.
TIFF_SPACING_RANGE_MM = (0.02, 0.5)
#: Plausible range of EstimatedRadiographicMagnificationFactor (contact 1.0, magnification views ~2).
MAGNIFICATION_RANGE = (1.0, 3.0)

_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")

# ---------------------------------------------------------------------------------------------
# Laterality / view parsing
# ---------------------------------------------------------------------------------------------

_LATERALITY_TOKENS = {"L": "L", "R": "R", "LEFT": "L", "RIGHT": "R", "LT": "L", "RT": "R"}
#: ACR / DICOM (CID 4014) mammography view abbreviations.
_VIEW_TOKENS = frozenset({"CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM", "FB", "SIO", "ISO", "AT", "CV", "TAN"})
#: View tokens that are also common words or abbreviations ("at", "cv", "iso", "tan"): they
#: count only when written in capitals and when no other view is named.
_WEAK_VIEW_TOKENS = frozenset({"AT", "CV", "FB", "TAN", "ISO"})

#: ViewCodeSequence codes (DICOM CID 4014 "View for Mammography", SNOMED-RT "R-" and SNOMED CT
#: ids) -> ACR abbreviation.
_VIEW_CODES = {
    "R-10242": "CC", "399162004": "CC",
    "R-10226": "MLO", "399368009": "MLO",
    "R-10224": "ML", "399260004": "ML",
    "R-10228": "LM", "399352003": "LM",
    "R-10230": "LMO", "399099002": "LMO",
    "R-1024A": "XCCL", "399192008": "XCCL",
    "R-1024B": "XCCM", "399101009": "XCCM",
    "R-10244": "FB", "399196006": "FB",
    "R-102D0": "SIO", "399188001": "SIO",
    "R-40AAA": "ISO", "441555000": "ISO",
}  # fmt: skip
#: ViewCodeSequence CodeMeaning (normalised: lower case, letters only) -> abbreviation.
_VIEW_MEANINGS = {
    "craniocaudal": "CC",
    "mediolateraloblique": "MLO",
    "mediolateral": "ML",
    "lateromedial": "LM",
    "lateromedialoblique": "LMO",
    "craniocaudalexaggeratedlaterally": "XCCL",
    "exaggeratedcraniocaudallateral": "XCCL",
    "craniocaudalexaggeratedmedially": "XCCM",
    "exaggeratedcraniocaudalmedial": "XCCM",
    "caudocranialfrombelow": "FB",
    "caudocranial": "FB",
    "superolateraltoinferomedialoblique": "SIO",
    "inferomedialtosuperolateraloblique": "ISO",
    "axillarytail": "AT",
    "cleavage": "CV",
}

_TOKEN_SPLIT = re.compile(r"[^A-Za-z0-9]+")
_ALPHA_DIGIT = re.compile(r"[A-Za-z]+|[0-9]+")


def _tokens(text: str) -> list[tuple[str, bool]]:
    """Upper-cased tokens, each with whether it was written in capitals in ``text``."""
    out: list[tuple[str, bool]] = []
    for part in _TOKEN_SPLIT.split(text):
        out.extend((m.group(0).upper(), m.group(0).isupper()) for m in _ALPHA_DIGIT.finditer(part))
    return out


def _pick_view(candidates: list[str]) -> Optional[str]:
    distinct = sorted(set(candidates))
    if len(distinct) == 1:
        return distinct[0]
    strong = sorted(set(c for c in distinct if c not in _WEAK_VIEW_TOKENS))
    return strong[0] if len(strong) == 1 else None


def parse_laterality_view(text: str) -> tuple[Optional[str], Optional[str]]:
    """Laterality ("L"/"R") and view ("CC", "MLO", ...) named in a free text or file name.

    Works on whole tokens (split at punctuation, spaces and letter/digit boundaries) so that
    random words never match: ``Mass-Test_P_00173_LEFT_CC``, ``R_MLO``, ``RCC``, ``LMLO``,
    ``left cc`` and ``1-2_R_CC.dcm`` all parse, ``Calcification`` or ``MRI scan`` do not.
    Abbreviations that are also words ("AT", "CV", "SPOT") count only when written in capitals.
    Contradicting tokens (both L and R, two different views) give None for that item.
    """
    if not isinstance(text, str) or not text:
        return None, None
    lats: list[str] = []
    views: list[str] = []
    for tok, capitals in _tokens(text):
        if tok in _LATERALITY_TOKENS:
            lats.append(_LATERALITY_TOKENS[tok])
        elif tok in _VIEW_TOKENS:
            # "at", "cv", "spot" in running text are words, not views: weak ones need capitals.
            if capitals or tok not in _WEAK_VIEW_TOKENS:
                views.append(tok)
        elif len(tok) >= 3 and tok[0] in "LR" and tok[1:] in _VIEW_TOKENS and tok[1:] not in _WEAK_VIEW_TOKENS:
            # Combined "RCC", "LMLO", "RML": side letter glued to a view abbreviation.
            lats.append(tok[0])
            views.append(tok[1:])
        elif tok.startswith(("LEFT", "RIGHT")):
            side = "L" if tok.startswith("LEFT") else "R"
            rest = tok[4:] if side == "L" else tok[5:]
            if rest in _VIEW_TOKENS and rest not in _WEAK_VIEW_TOKENS:
                lats.append(side)
                views.append(rest)
    lat = lats[0] if lats and len(set(lats)) == 1 else None
    return lat, _pick_view(views)


def _normalise_laterality(value: Any) -> Optional[str]:
    if value is None:
        return None
    text = str(value).strip().upper()
    return _LATERALITY_TOKENS.get(text) if text in ("L", "R", "LEFT", "RIGHT") else None


def _normalise_view(value: Any) -> Optional[str]:
    if value is None:
        return None
    text = str(value).strip().upper()
    if text in _VIEW_TOKENS:
        return text
    _, view = parse_laterality_view(text)
    return view


# ---------------------------------------------------------------------------------------------
# Laterality from the image
# ---------------------------------------------------------------------------------------------


def _downsample(pixels: np.ndarray, target: int = 256) -> np.ndarray:
    """Block-mean downsample to about ``target`` pixels on the long side (cheap, no deps)."""
    rows, cols = pixels.shape
    step = max(1, int(np.ceil(max(rows, cols) / target)))
    r, c = (rows // step) * step, (cols // step) * step
    if r == 0 or c == 0:
        return pixels.astype(np.float32)
    block = pixels[:r, :c].astype(np.float32).reshape(r // step, step, c // step, step)
    return block.mean(axis=(1, 3))


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256)
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))])


def estimate_laterality(pixels: np.ndarray, photometric: str = "MONOCHROME2") -> Optional[str]:
    """Which breast an image shows, from where its chest wall is.

    DICOM stores a LEFT breast with the chest wall at the left image edge and a RIGHT breast
    with it at the right edge (CBIS-DDSM follows this), so the side where the breast touches
    the image border over a long stretch is the chest wall. Burned-in labels are small and
    film edges are thin bright strips along the border, so the breast is taken as the largest
    bright connected region after trimming the outer margin, and the answer is None unless one
    side clearly dominates.
    """
    from scipy import ndimage

    arr = np.asarray(pixels)
    if arr.ndim != 2 or min(arr.shape) < 16 or not np.issubdtype(arr.dtype, np.number):
        return None
    img = _downsample(arr)
    if photometric == "MONOCHROME1":
        img = img.max() - img
    rows, cols = img.shape
    # Trim film edges / scanner borders: 3% margin on every side.
    mr, mc = max(1, int(round(rows * 0.03))), max(1, int(round(cols * 0.03)))
    core = img[mr : rows - mr, mc : cols - mc]
    if core.size == 0 or not np.isfinite(core).all() or float(core.max()) <= float(core.min()):
        return None
    lo, hi = np.percentile(core, [1, 99.5])
    if hi <= lo:
        return None
    thr = _otsu(np.clip(core, lo, hi))
    mask = core > thr
    mask = ndimage.binary_opening(mask, iterations=1)
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
    breast = labels == (int(np.argmax(sizes)) + 1)
    area = float(breast.sum())
    if area < 0.03 * core.size:
        return None
    # Chest wall: the breast touches that border over a long stretch, and the breast's mass
    # sits on that side.
    left_touch = float(breast[:, :2].any(axis=1).mean())
    right_touch = float(breast[:, -2:].any(axis=1).mean())
    col_mass = breast.sum(axis=0).astype(np.float64)
    centroid = float((col_mass * np.arange(col_mass.size)).sum() / col_mass.sum()) / max(1, col_mass.size - 1)
    score = (left_touch - right_touch) + (0.5 - centroid) * 2.0
    log.debug(
        "estimate_laterality: touch L %.2f R %.2f centroid %.2f score %.2f", left_touch, right_touch, centroid, score
    )
    if score > 0.3:
        return "L"
    if score < -0.3:
        return "R"
    return None


# ---------------------------------------------------------------------------------------------
# Common checks
# ---------------------------------------------------------------------------------------------


def _name(path: Optional[Path]) -> str:
    return path.name if path is not None else "array"


def _check_size(rows: int, cols: int, path: Optional[Path]) -> None:
    if rows < MIN_SIDE_PX or cols < MIN_SIDE_PX:
        raise NotAMammogramError(
            f"{_name(path)}: image of {rows}x{cols} pixels is too small for a mammogram (minimum {MIN_SIDE_PX}x{MIN_SIDE_PX})"
        )
    if rows * cols > MAX_PIXELS:
        raise NotAMammogramError(
            f"{_name(path)}: image of {rows}x{cols} pixels ({rows * cols / 1e6:.0f} megapixels) is larger than any mammogram (maximum {MAX_PIXELS // 1_000_000} megapixels)"
        )


def _grey_from_channels(arr: np.ndarray, path: Optional[Path], tolerance: float = 0.0) -> np.ndarray:
    """Return one channel of a (rows, cols, channels) array whose colour channels are equal.

    Many tools save grey images as RGB; those are accepted. A real colour image (a photo, a
    screenshot with coloured overlays) is not a mammogram.
    """
    colour = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]
    first = colour[..., 0]
    for k in range(1, colour.shape[-1]):
        diff = (
            np.abs(colour[..., k].astype(np.int64) - first.astype(np.int64))
            if np.issubdtype(colour.dtype, np.integer)
            else np.abs(colour[..., k] - first)
        )
        if diff.size and float(diff.max()) > tolerance:
            raise NotAMammogramError(
                f"{_name(path)}: colour image (its colour channels differ); a mammogram is grey-scale"
            )
    return np.ascontiguousarray(first)


def _check_pixels(arr: np.ndarray, path: Optional[Path]) -> np.ndarray:
    if arr.ndim != 2:
        raise NotAMammogramError(f"{_name(path)}: pixel data has shape {arr.shape}; a mammogram is one 2-D image")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)) or arr.dtype == np.bool_:
        raise UnreadableFileError(f"{_name(path)}: unsupported pixel type {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise UnreadableFileError(f"{_name(path)}: pixel data contains NaN or infinite values")
    _check_size(int(arr.shape[0]), int(arr.shape[1]), path)
    return arr


def _user_spacing(value: Union[float, Sequence[float]], path: Optional[Path]) -> tuple[float, float]:
    return check_spacing(value, plausible_mm=SPACING_RANGE_MM, what=_name(path))


# ---------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------


def _ds_get(ds: Any, keyword: str) -> Any:
    """A data element's value, or None when absent or malformed (pydicom raises lazily)."""
    try:
        value = getattr(ds, keyword, None)
    except Exception:  # noqa: BLE001 - pydicom may raise anything while converting a bad value
        return None
    if value is None or value == "":
        return None
    return value


def _ds_str(ds: Any, keyword: str) -> Optional[str]:
    value = _ds_get(ds, keyword)
    if value is None:
        return None
    try:
        text = str(value).strip()
    except Exception:  # noqa: BLE001
        return None
    return text or None


def _ds_int(ds: Any, keyword: str) -> Optional[int]:
    value = _ds_get(ds, keyword)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


def _ds_float(ds: Any, keyword: str) -> Optional[float]:
    value = _ds_get(ds, keyword)
    try:
        out = float(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):
        return None
    return out if out is not None and np.isfinite(out) else None


def _ds_pair(ds: Any, keyword: str) -> Optional[tuple[float, float]]:
    value = _ds_get(ds, keyword)
    if value is None:
        return None
    try:
        seq = [float(v) for v in value] if not isinstance(value, (str, bytes, int, float)) else [float(value)]
    except (TypeError, ValueError, OverflowError):
        return None
    if len(seq) == 1:
        seq = seq * 2
    if len(seq) != 2:
        return None
    return (seq[0], seq[1])


def _dicom_spacing(ds: Any, warn: list[str], name: str) -> tuple[Optional[tuple[float, float]], Optional[str]]:
    """Pixel spacing in the breast plane, with its source. Precedence: ImagerPixelSpacing
    corrected by a plausible EstimatedRadiographicMagnificationFactor, then ImagerPixelSpacing,
    PixelSpacing, NominalScannedPixelSpacing; the first plausible one wins, each implausible
    one is warned about."""
    candidates: list[tuple[tuple[float, float], str]] = []
    imager = _ds_pair(ds, "ImagerPixelSpacing")
    if imager is not None:
        factor = _ds_float(ds, "EstimatedRadiographicMagnificationFactor")
        if factor is not None and MAGNIFICATION_RANGE[0] <= factor <= MAGNIFICATION_RANGE[1]:
            candidates.append(
                (
                    (imager[0] / factor, imager[1] / factor),
                    "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor",
                )
            )
        elif factor is not None:
            warn.append(f"{name}: ignored implausible EstimatedRadiographicMagnificationFactor {factor:g}")
        candidates.append((imager, "ImagerPixelSpacing"))
    for keyword in ("PixelSpacing", "NominalScannedPixelSpacing"):
        pair = _ds_pair(ds, keyword)
        if pair is not None:
            candidates.append((pair, keyword))
    for pair, source in candidates:
        if is_plausible(pair):
            return pair, source
        warn.append(f"{name}: ignored implausible {source} {pair[0]:g} x {pair[1]:g} mm")
        if source.startswith("ImagerPixelSpacing/"):
            break  # the uncorrected value is just as implausible a basis
    return None, None


def _dicom_view(ds: Any) -> tuple[Optional[str], Optional[str]]:
    view = _normalise_view(_ds_str(ds, "ViewPosition"))
    if view is not None:
        return view, "ViewPosition"
    seq = _ds_get(ds, "ViewCodeSequence")
    try:
        items = list(seq) if seq is not None else []
    except Exception:  # noqa: BLE001
        items = []
    for item in items:
        code = _ds_str(item, "CodeValue")
        if code is not None and code.upper() in _VIEW_CODES:
            return _VIEW_CODES[code.upper()], "ViewCodeSequence"
        meaning = _ds_str(item, "CodeMeaning")
        if meaning is not None:
            key = re.sub(r"[^a-z]", "", meaning.lower())
            if key in _VIEW_MEANINGS:
                return _VIEW_MEANINGS[key], "ViewCodeSequence"
    return None, None


def _dicom_modality_lut(ds: Any) -> Optional[tuple[int, np.ndarray]]:
    seq = _ds_get(ds, "ModalityLUTSequence")
    try:
        item = seq[0] if seq is not None and len(seq) > 0 else None
        if item is None:
            return None
        desc = list(item.LUTDescriptor)
        first = int(desc[1])
        data = item.LUTData
        if isinstance(data, (bytes, bytearray)):
            bits = int(desc[2]) if len(desc) > 2 else 16
            table = np.frombuffer(data, dtype="<u2" if bits > 8 else np.uint8).astype(np.int64)
        else:
            table = np.asarray(list(data) if not isinstance(data, int) else [data], dtype=np.int64)
        return first, table
    except Exception:  # noqa: BLE001 - a malformed optional LUT is reported, not fatal
        return None


def _read_dicom(path: Path, force: bool) -> Mammogram:
    """Read a DICOM file; pydicom's warnings about odd values stay in its log, not on stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _read_dicom_dataset(path, force)


def _read_dicom_dataset(path: Path, force: bool) -> Mammogram:
    """Each check below names the file and the exact problem, in the order a reader meets
    them: the header, the modality, the pixel data's presence, its geometry, its length,
    then decoding; metadata (spacing, side, view, UIDs) comes last."""
    name = path.name
    ds, truncated = _open_dataset(path, force)
    warn: list[str] = []
    modality = _dicom_modality(ds, name, warn)
    _require_pixel_data(ds, name, force=force, modality=modality, truncated=truncated)
    rows, cols, spp, bits_alloc, photometric = _dicom_geometry(ds, path, warn)
    _check_pixel_data_length(ds, name, rows * cols * spp * bits_alloc)
    arr, photometric = _decode_dicom_pixels(ds, path, (rows, cols), spp, photometric, warn)
    spacing, spacing_source = _dicom_spacing(ds, warn, name)
    (lat, lat_src), (view, view_src) = _dicom_laterality_view(ds)
    intent = _ds_str(ds, "PresentationIntentType")
    slope = _ds_float(ds, "RescaleSlope")
    intercept = _ds_float(ds, "RescaleIntercept")
    bits_stored = _ds_int(ds, "BitsStored")
    return Mammogram(
        pixels=arr,
        spacing_mm=spacing,
        spacing_source=spacing_source,
        photometric=photometric,
        laterality=lat,
        laterality_source=lat_src,
        view=view,
        view_source=view_src,
        presentation_intent=intent.upper() if intent else None,
        bits_stored=bits_stored if bits_stored and 0 < bits_stored <= 32 else None,
        rescale_slope=slope if slope not in (None, 0.0) else 1.0,
        rescale_intercept=intercept if intercept is not None else 0.0,
        modality_lut=_dicom_modality_lut(ds),
        modality=modality,
        manufacturer=_ds_str(ds, "Manufacturer"),
        patient_id=_ds_str(ds, "PatientID"),
        study_uid=_ds_str(ds, "StudyInstanceUID"),
        series_uid=_ds_str(ds, "SeriesInstanceUID"),
        sop_uid=_ds_str(ds, "SOPInstanceUID"),
        source=str(path),
        warnings=warn,
    )


def _open_dataset(path: Path, force: bool) -> tuple[Any, bool]:
    """(the parsed dataset, whether pydicom hit the end of the file while parsing)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    name = path.name
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(str(path), force=force)
    except InvalidDicomError as exc:
        raise UnreadableFileError(f"{name}: not a valid DICOM file ({exc})") from None
    except MemoryError:
        raise UnreadableFileError(
            f"{name}: DICOM header asks for an impossible amount of memory (corrupt file)"
        ) from None
    except BaseException as exc:  # noqa: BLE001 - pydicom raises many types on corrupt/truncated input
        _reraise_fatal(exc)
        raise UnreadableFileError(
            f"{name}: corrupt or truncated DICOM file ({type(exc).__name__}: {_short(exc)})"
        ) from None
    return ds, any("end of file" in str(w.message).lower() for w in caught)


def _dicom_modality(ds: Any, name: str, warn: list[str]) -> Optional[str]:
    """The upper-case Modality (None when absent, with a warning); other modalities refused."""
    modality = _ds_str(ds, "Modality")
    if modality is None:
        warn.append(f"{name}: DICOM file has no Modality; assuming a mammogram")
        return None
    modality = modality.upper()
    if modality not in ACCEPTED_MODALITIES:
        raise NotAMammogramError(
            f"{name}: DICOM modality {modality} is not a mammogram (expected {', '.join(ACCEPTED_MODALITIES[:-1])} or {ACCEPTED_MODALITIES[-1]})"
        )
    return modality


def _require_pixel_data(ds: Any, name: str, *, force: bool, modality: Optional[str], truncated: bool) -> None:
    """Refuse a dataset without Pixel Data, saying why it probably has none."""
    if "PixelData" in ds:
        return
    if force and modality is None:
        raise UnreadableFileError(f"{name}: not a DICOM image or any other known image format")
    if truncated or "Rows" in ds or "Columns" in ds:
        # pydicom drops an encapsulated Pixel Data element cut short by the end of the file.
        raise UnreadableFileError(
            f"{name}: truncated DICOM file: image attributes present but Pixel Data missing or incomplete"
        )
    # Non-image objects (SR, KO, PR ...) were refused by modality above; an MG/DX/CR or
    # modality-less file without pixels is a header cut short or a broken export.
    raise UnreadableFileError(f"{name}: DICOM file has no Pixel Data (truncated, or not an image)")


def _dicom_geometry(ds: Any, path: Path, warn: list[str]) -> tuple[int, int, int, int, str]:
    """(rows, columns, samples per pixel, bits allocated, photometric) of a single-frame
    grey (or grey-as-RGB) image; anything else is refused here, before decoding."""
    name = path.name
    frames = _ds_get(ds, "NumberOfFrames")
    if frames is not None:
        try:
            n_frames = int(frames)
        except (TypeError, ValueError, OverflowError):
            raise UnreadableFileError(f"{name}: malformed NumberOfFrames {frames!r}") from None
        if n_frames > 1:
            raise NotAMammogramError(f"{name}: multi-frame DICOM with {n_frames} frames; a mammogram is one 2-D image")
    rows, cols = _ds_int(ds, "Rows"), _ds_int(ds, "Columns")
    if rows is None or cols is None:
        raise UnreadableFileError(f"{name}: DICOM image without valid Rows/Columns")
    _check_size(rows, cols, path)
    spp = _ds_int(ds, "SamplesPerPixel") or 1
    photometric = (_ds_str(ds, "PhotometricInterpretation") or "").upper()
    bits_alloc = _ds_int(ds, "BitsAllocated")
    if bits_alloc not in (1, 8, 16, 32):
        raise UnreadableFileError(f"{name}: unsupported BitsAllocated {bits_alloc}")
    if spp not in (1, 3):
        raise NotAMammogramError(f"{name}: {spp} samples per pixel; a mammogram has 1 (grey-scale)")
    if photometric == "PALETTE COLOR":
        raise NotAMammogramError(f"{name}: palette colour image; a mammogram is grey-scale")
    if spp == 1 and photometric not in _PHOTOMETRICS:
        if photometric:
            raise UnreadableFileError(
                f"{name}: photometric interpretation {photometric!r} is invalid for a 1-sample image"
            )
        warn.append(f"{name}: no PhotometricInterpretation; assuming MONOCHROME2")
        photometric = "MONOCHROME2"
    if spp == 3 and photometric in _PHOTOMETRICS:
        raise UnreadableFileError(f"{name}: {photometric} image with 3 samples per pixel is inconsistent")
    return rows, cols, spp, int(bits_alloc), photometric


def _check_pixel_data_length(ds: Any, name: str, expected_bits: int) -> None:
    """Uncompressed data shorter than the header promises = truncated file: say so plainly."""
    try:
        encapsulated = ds.file_meta.TransferSyntaxUID.is_compressed
    except Exception:  # noqa: BLE001
        encapsulated = False
    if encapsulated:
        return
    expected = (expected_bits + 7) // 8
    try:
        have = len(ds.PixelData)
    except Exception as exc:  # noqa: BLE001
        raise UnreadableFileError(f"{name}: unreadable Pixel Data ({_short(exc)})") from None
    if have < expected:
        rows, cols, bits_alloc = _ds_int(ds, "Rows"), _ds_int(ds, "Columns"), _ds_int(ds, "BitsAllocated")
        raise UnreadableFileError(
            f"{name}: truncated DICOM: Pixel Data has {have} bytes, {expected} expected for {rows}x{cols}x{bits_alloc} bits"
        )


def _decode_dicom_pixels(
    ds: Any, path: Path, shape: tuple[int, int], spp: int, photometric: str, warn: list[str]
) -> tuple[np.ndarray, str]:
    """(decoded 2-D pixels, photometric): a grey image stored as colour becomes MONOCHROME2."""
    name = path.name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except MemoryError:
        raise UnreadableFileError(f"{name}: pixel data needs an impossible amount of memory (corrupt header)") from None
    except BaseException as exc:  # noqa: BLE001 - decoders (pydicom, pylibjpeg, openjpeg, jpeg-ls) raise anything
        _reraise_fatal(exc)
        raise UnreadableFileError(
            f"{name}: cannot decode DICOM pixel data ({type(exc).__name__}: {_short(exc)})"
        ) from None
    arr = np.asarray(arr)
    if spp == 3:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise UnreadableFileError(f"{name}: colour pixel data of unexpected shape {arr.shape}")
        lossy = "JPEG" in str(getattr(ds.file_meta, "TransferSyntaxUID", "")).upper() or photometric.startswith("YBR")
        arr = _grey_from_channels(arr, path, tolerance=_lossy_tolerance(arr) if lossy else 0.0)
        warn.append(f"{name}: grey image stored as {photometric}; using its first channel as MONOCHROME2")
        photometric = "MONOCHROME2"
    if arr.shape[:2] != tuple(shape):
        raise UnreadableFileError(
            f"{name}: decoded pixel data has shape {arr.shape}, header says {shape[0]}x{shape[1]}"
        )
    return _check_pixels(arr, path), photometric


def _dicom_laterality_view(ds: Any) -> tuple[tuple[Optional[str], Optional[str]], tuple[Optional[str], Optional[str]]]:
    """((laterality, source keyword), (view, source keyword)): the dedicated attributes first,
    then free text (PatientID, SeriesDescription), as CBIS-DDSM keeps them only there."""
    lat, lat_src = None, None
    for keyword in ("ImageLaterality", "Laterality"):
        lat = _normalise_laterality(_ds_str(ds, keyword))
        if lat is not None:
            lat_src = keyword
            break
    view, view_src = _dicom_view(ds)
    for keyword in ("PatientID", "SeriesDescription"):
        if lat is not None and view is not None:
            break
        text = _ds_str(ds, keyword)
        if text is None:
            continue
        t_lat, t_view = parse_laterality_view(text)
        if lat is None and t_lat is not None:
            lat, lat_src = t_lat, keyword
        if view is None and t_view is not None:
            view, view_src = t_view, keyword
    return (lat, lat_src), (view, view_src)


def _lossy_tolerance(arr: np.ndarray) -> float:
    # Lossy colour codecs leave grey images with channels a few grey levels apart.
    return 3.0 if arr.dtype.itemsize == 1 else 3.0 * 256


def _reraise_fatal(exc: BaseException) -> None:
    """Let Ctrl-C and interpreter exit through; everything else from a decoder is a bad file.

    Catching BaseException is deliberate: decoders written in Rust (pylibjpeg-rle) turn
    panics on corrupt data into ``pyo3_runtime.PanicException``, a BaseException subclass.
    """
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        raise exc


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------------------------


def _full_suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def _sniff(path: Path, head: bytes) -> Optional[str]:
    """The file format from its first bytes (magic numbers beat file names)."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 2 and head[0:1] == b"P" and head[1:2] in (b"1", b"2", b"3", b"4", b"5", b"6"):
        return "pnm"
    if head.startswith(b"NRRD"):
        return "sitk"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00", b"n+2\x00", b"ni2\x00"):
        return "sitk"
    if head.startswith(b"\x1f\x8b") and _full_suffix(path) == ".nii.gz":
        return "sitk"
    if re.match(rb"\s*(ObjectType|NDims)\s*=", head[:64]):
        return "sitk"
    return None


# ---------------------------------------------------------------------------------------------
# PNG / JPEG / PNM via Pillow, TIFF via tifffile
# ---------------------------------------------------------------------------------------------


def _pil_to_array(img: Any, path: Path) -> np.ndarray:
    """Grey pixels, as stored, from a loaded Pillow image of any mode."""
    mode = img.mode
    tolerance = 3.0 if img.format == "JPEG" else 0.0  # lossy colour JPEGs of grey images
    if mode in ("L", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img)
    elif mode == "1":
        arr = np.asarray(img.convert("L"))
    elif mode == "I":  # 16-bit PGM/PNG/TIFF on some Pillow versions: narrow when it fits
        arr = np.asarray(img)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            arr = arr.astype(np.uint16)
    elif mode in ("LA", "La"):
        arr = np.asarray(img)[..., 0]
    elif mode in ("RGB", "RGBA", "RGBX", "RGBa"):
        arr = _grey_from_channels(np.asarray(img), path, tolerance)
    elif mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        arr = _grey_from_channels(np.asarray(img.convert("RGB")), path, tolerance)
    else:
        raise UnreadableFileError(f"{path.name}: unsupported image mode {mode}")
    return np.array(arr, copy=True)


def _read_pillow(path: Path, fmt: str) -> tuple[np.ndarray, Optional[tuple[float, float]], Optional[str], list[str]]:
    from PIL import Image

    name = path.name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                cols, rows = img.size
                _check_size(int(rows), int(cols), path)
                n_frames = int(getattr(img, "n_frames", 1))
                if n_frames > 1:
                    raise NotAMammogramError(
                        f"{name}: image file holds {n_frames} frames; a mammogram is one 2-D image"
                    )
                img.load()
                arr = _pil_to_array(img, path)
    except MicrocalcAIError:
        raise
    except Image.DecompressionBombError:
        raise NotAMammogramError(
            f"{name}: image is larger than any mammogram (maximum {MAX_PIXELS // 1_000_000} megapixels)"
        ) from None
    except MemoryError:
        raise UnreadableFileError(f"{name}: image needs an impossible amount of memory (corrupt header)") from None
    except BaseException as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, struct.error ...
        _reraise_fatal(exc)
        raise UnreadableFileError(
            f"{name}: corrupt or unsupported {fmt.upper()} file ({type(exc).__name__}: {_short(exc)})"
        ) from None
    return arr, None, None, []


_TIFF_UNIT_MM = {2: 25.4, 3: 10.0}  # ResolutionUnit: 2 = inch, 3 = centimetre


def _ratio(value: Any) -> float:
    return float(value[0]) / float(value[1]) if isinstance(value, tuple) else float(value)


def _is_default_dpi(value: Any) -> bool:
    """72 and 96 dpi are what editors write when they know nothing (0.35 / 0.26 mm would pass
    the range check and shrink a real 0.07 mm mammogram five-fold)."""
    try:
        return round(_ratio(value), 3) in (72.0, 96.0)
    except (TypeError, ValueError, ZeroDivisionError, IndexError):
        return False


def _tiff_spacing(page: Any, warn: list[str], name: str) -> Optional[tuple[float, float]]:
    try:
        tags = page.tags
        unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
        xres, yres = tags["XResolution"].value, tags["YResolution"].value
    except Exception:  # noqa: BLE001 - absent/malformed resolution = unknown spacing
        return None
    if unit not in _TIFF_UNIT_MM:
        return None
    if unit == 2 and _is_default_dpi(xres) and _is_default_dpi(yres):
        warn.append(
            f"{name}: TIFF resolution is the {_ratio(xres):g} dpi default of image editors, not a pixel spacing; spacing unknown"
        )
        return None
    try:
        x, y = _ratio(xres), _ratio(yres)
        pair = (_TIFF_UNIT_MM[unit] / y, _TIFF_UNIT_MM[unit] / x)
    except (TypeError, ValueError, ZeroDivisionError, IndexError):
        return None
    if is_plausible(pair, TIFF_SPACING_RANGE_MM):
        return pair
    log.debug("%s: TIFF resolution gives %.4g x %.4g mm, not a mammogram spacing; ignored", name, *pair)
    return None


def _read_tiff(path: Path) -> tuple[np.ndarray, Optional[tuple[float, float]], Optional[str], list[str]]:
    import tifffile

    name = path.name
    warn: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with tifffile.TiffFile(path) as tif:
                if not tif.pages:
                    raise UnreadableFileError(f"{name}: TIFF file has no images")
                series = tif.series[0]
                page: Any = series.pages[0] if series.pages else tif.pages[0]
                shape = tuple(int(s) for s in series.shape)
                photometric_tag = int(getattr(page, "photometric", 1))
                samples = int(getattr(page, "samplesperpixel", 1))
                spatial = [s for s in shape if s > 1]
                if samples == 1 and len(spatial) > 2:
                    raise NotAMammogramError(f"{name}: TIFF holds a {shape} stack; a mammogram is one 2-D image")
                if samples > 1 and len(spatial) > 3:
                    raise NotAMammogramError(f"{name}: TIFF holds a {shape} stack; a mammogram is one 2-D image")
                rows, cols = int(page.imagelength), int(page.imagewidth)
                _check_size(rows, cols, path)
                spacing = _tiff_spacing(page, warn, name)
                try:
                    arr = page.asarray()
                except (ValueError, NotImplementedError, KeyError) as exc:
                    if "imagecodecs" not in str(exc) and "not supported" not in str(exc).lower():
                        raise
                    arr = None
    except MicrocalcAIError:
        raise
    except MemoryError:
        raise UnreadableFileError(f"{name}: TIFF needs an impossible amount of memory (corrupt header)") from None
    except BaseException as exc:  # noqa: BLE001 - tifffile raises many types on corrupt input
        _reraise_fatal(exc)
        raise UnreadableFileError(
            f"{name}: corrupt or unsupported TIFF file ({type(exc).__name__}: {_short(exc)})"
        ) from None
    if arr is None:  # compression tifffile cannot decode without imagecodecs: Pillow's libtiff can
        arr, _, _, _ = _read_pillow(path, "tiff")
    arr = np.asarray(arr)
    arr = np.squeeze(arr) if arr.ndim > 2 and samples == 1 else arr
    if arr.ndim == 3:
        if samples > 1 and arr.shape[0] == samples and arr.shape[-1] != samples:
            arr = np.moveaxis(arr, 0, -1)  # planar configuration
        arr = _grey_from_channels(arr, path)
    photometric = "MONOCHROME1" if photometric_tag == 0 else None  # MINISWHITE
    return np.array(arr, copy=True), spacing, photometric, warn


# ---------------------------------------------------------------------------------------------
# NRRD / NIfTI / MHA via SimpleITK
# ---------------------------------------------------------------------------------------------


def _read_sitk(path: Path) -> tuple[np.ndarray, Optional[tuple[float, float]], Optional[str], list[str]]:
    import SimpleITK as sitk

    name = path.name
    warn: list[str] = []
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size = tuple(int(s) for s in reader.GetSize())
        dim = int(reader.GetDimension())
        comps = int(reader.GetNumberOfComponents())
        spacing_xyz = tuple(float(s) for s in reader.GetSpacing())
    except BaseException as exc:  # noqa: BLE001 - SimpleITK raises RuntimeError with ITK's text
        _reraise_fatal(exc)
        raise UnreadableFileError(f"{name}: cannot read image header ({_short(exc)})") from None
    if dim < 2 or dim > 4 or any(s > 1 for s in size[2:]):
        raise NotAMammogramError(
            f"{name}: {dim}-D image of size {'x'.join(map(str, size))}; a mammogram is one 2-D image"
        )
    cols, rows = size[0], size[1]
    _check_size(rows, cols, path)
    if comps not in (1, 3, 4):
        raise NotAMammogramError(f"{name}: {comps} components per pixel; a mammogram is grey-scale")
    try:
        arr = sitk.GetArrayFromImage(reader.Execute())
    except MemoryError:
        raise UnreadableFileError(f"{name}: image needs an impossible amount of memory (corrupt header)") from None
    except BaseException as exc:  # noqa: BLE001
        _reraise_fatal(exc)
        raise UnreadableFileError(f"{name}: cannot read image data ({_short(exc)})") from None
    arr = np.asarray(arr)
    if comps > 1:
        arr = arr.reshape(rows, cols, comps)
        arr = _grey_from_channels(arr, path)
    else:
        arr = arr.reshape(rows, cols)
    header = (float(spacing_xyz[1]), float(spacing_xyz[0]))
    spacing: Optional[tuple[float, float]] = header
    if header == (1.0, 1.0):
        warn.append(
            f"{name}: header spacing is exactly 1.0 x 1.0 mm, which means 'not set' for a mammogram; spacing unknown"
        )
        spacing = None
    elif not is_plausible(header):
        warn.append(f"{name}: ignored implausible header spacing {header[0]:g} x {header[1]:g} mm")
        spacing = None
    return np.array(arr, copy=True), spacing, None, warn


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _read_file(path: Path) -> tuple[Mammogram, bool]:
    """Read a file of any supported format: (record, whether the file states its photometric)."""
    name = path.name
    try:
        if not path.exists():
            raise UnreadableFileError(f"{path}: file does not exist")
        if path.is_dir():
            raise UnreadableFileError(f"{path}: is a folder, not an image file")
        size = path.stat().st_size
        if size == 0:
            raise UnreadableFileError(f"{name}: file is empty")
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        raise UnreadableFileError(f"{path}: cannot open file ({exc.strerror or exc})") from None
    fmt = _sniff(path, head)
    suffix = _full_suffix(path)
    if fmt is None:
        if suffix in (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd"):
            fmt = "sitk"
        elif suffix in (".dcm", ".dicom", ".dic", ".ima", "") or suffix not in SUPPORTED_SUFFIXES:
            fmt = "dicom-raw"  # DICOM without preamble (old ACR-NEMA-style files) or unknown
        else:
            raise UnreadableFileError(f"{name}: not a valid {suffix[1:].upper()} file (unrecognised content)")
    log.debug("%s: format %s", name, fmt)
    if fmt == "dicom":
        return _read_dicom(path, force=False), True
    if fmt == "dicom-raw":
        try:
            return _read_dicom(path, force=True), True
        except UnreadableFileError as exc:
            if suffix in (".dcm", ".dicom", ".dic", ".ima"):
                raise
            raise UnreadableFileError(f"{name}: unknown or unsupported image format") from exc
    if fmt == "tiff":
        arr, spacing, photometric, warn = _read_tiff(path)
    elif fmt == "sitk":
        arr, spacing, photometric, warn = _read_sitk(path)
    else:
        arr, spacing, photometric, warn = _read_pillow(path, fmt)
    arr = _check_pixels(arr, path)
    mam = Mammogram(
        pixels=arr,
        spacing_mm=spacing,
        spacing_source="file" if spacing is not None else None,
        photometric=photometric or "MONOCHROME2",
        bits_stored=int(arr.dtype.itemsize * 8) if np.issubdtype(arr.dtype, np.integer) else None,
        source=str(path),
        warnings=warn,
    )
    return mam, photometric is not None


def _read_array(source: np.ndarray) -> Mammogram:
    arr = np.asarray(source)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]  # Slicer: a 2-D volume is (1, rows, columns)
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = _grey_from_channels(arr, None)
    arr = _check_pixels(arr, None)
    return Mammogram(
        pixels=np.array(arr, copy=True),
        spacing_mm=None,
        bits_stored=int(arr.dtype.itemsize * 8) if np.issubdtype(arr.dtype, np.integer) else None,
    )


def _user_laterality(laterality: Optional[str]) -> Optional[str]:
    if laterality is None:
        return None
    side = _normalise_laterality(laterality)
    if side is None:
        raise InputError(f"laterality must be 'L' or 'R' (or LEFT/RIGHT), got {laterality!r}")
    return side


def _user_view(view: Optional[str]) -> Optional[str]:
    if view is None:
        return None
    code = _normalise_view(view)
    if code is None:
        raise InputError(f"view must be a mammography view such as CC or MLO, got {view!r}")
    return code


def user_overrides(
    *,
    spacing_mm: Union[float, Sequence[float], None] = None,
    laterality: Optional[str] = None,
    view: Optional[str] = None,
    source: Optional[Union[str, os.PathLike[str]]] = None,
) -> dict[str, Any]:
    """Validated :class:`Mammogram` field values for what a user stated explicitly.

    One place for the rules, so a record read here and a record built elsewhere (the Slicer
    module, a script) are overridden identically: the values and their source "user".
    """
    changes: dict[str, Any] = {}
    if spacing_mm is not None:
        path = Path(os.fspath(source)) if source is not None else None
        changes.update(spacing_mm=_user_spacing(spacing_mm, path), spacing_source="user")
    side = _user_laterality(laterality)
    if side is not None:
        changes.update(laterality=side, laterality_source="user")
    code = _user_view(view)
    if code is not None:
        changes.update(view=code, view_source="user")
    return changes


def read_mammogram(
    source: Union[str, os.PathLike[str], np.ndarray],
    *,
    spacing_mm: Union[float, tuple[float, float], None] = None,
    laterality: Optional[str] = None,
    view: Optional[str] = None,
    photometric: str = "MONOCHROME2",
) -> Mammogram:
    """Read one mammogram from a file or an array into a :class:`Mammogram`.

    Explicit arguments beat what the file says (their source becomes "user"): a user knows
    when a header is wrong, and an array (what Slicer passes) has no header at all.
    ``photometric`` applies to arrays and to formats that cannot record it (PNG, JPEG, PGM,
    NRRD ...); DICOM and TIFF (MINISWHITE) headers win.

    Laterality and view, when not given, come from DICOM tags, then the DICOM PatientID and
    SeriesDescription, then the file name; laterality finally from the image itself.

    Raises only :class:`~MicrocalcAI.core.errors.MicrocalcAIError` subclasses:
    :class:`UnreadableFileError` (missing, empty, corrupt, unknown format),
    :class:`NotAMammogramError` (CT/MR/US..., colour, 3-D, multi-frame, too small/large),
    :class:`SpacingError` (implausible user spacing), :class:`InputError` (bad argument).
    """
    if photometric not in _PHOTOMETRICS:
        raise InputError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    user_lat, user_view = _user_laterality(laterality), _user_view(view)  # bad values fail before reading

    path: Optional[Path] = None
    try:
        if isinstance(source, np.ndarray):
            mam = _read_array(source)
            mam.photometric = photometric
        elif isinstance(source, (str, os.PathLike)):
            path = Path(os.fspath(source))
            mam, photometric_known = _read_file(path)
            if not photometric_known:
                mam.photometric = photometric
        else:
            raise InputError(f"cannot read a mammogram from a {type(source).__name__}; give a path or a numpy array")
    except MicrocalcAIError:
        raise
    except MemoryError:
        raise UnreadableFileError(f"{_name(path)}: not enough memory to read the image") from None

    for field_name, value in user_overrides(
        spacing_mm=spacing_mm, laterality=user_lat, view=user_view, source=path
    ).items():
        setattr(mam, field_name, value)
    _guess_laterality_view(mam, path)
    log.debug(
        "read %s: %dx%d %s, spacing %s (%s), %s %s",
        _name(path),
        *mam.shape,
        mam.photometric,
        mam.spacing_mm,
        mam.spacing_source,
        mam.laterality,
        mam.view,
    )
    return mam


def _guess_laterality_view(mam: Mammogram, path: Optional[Path]) -> None:
    """Fill a laterality or view the file did not state: from the file name, then (laterality
    only) from the image itself, with a warning because that is an estimate."""
    if path is not None and (mam.laterality is None or mam.view is None):
        stem = path.name[: -len(_full_suffix(path))] if _full_suffix(path) else path.name
        f_lat, f_view = parse_laterality_view(stem)
        if mam.laterality is None and f_lat is not None:
            mam.laterality, mam.laterality_source = f_lat, "filename"
        if mam.view is None and f_view is not None:
            mam.view, mam.view_source = f_view, "filename"
    if mam.laterality is None:
        est = estimate_laterality(mam.pixels, mam.photometric)
        if est is not None:
            mam.laterality, mam.laterality_source = est, "image"
            mam.warnings.append(f"{_name(path)}: laterality {est} estimated from the image (chest-wall side)")


def has_dicom_preamble(path: Path) -> bool:
    """Whether the file starts like a DICOM Part 10 file ("DICM" after the 128-byte preamble),
    whatever its name: DICOM files are often extension-less or named after their UID."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _is_candidate(path: Path) -> bool:
    name = path.name
    if name.startswith(".") or name.upper() == "DICOMDIR":
        return False
    suffix = _full_suffix(path)
    if suffix in SUPPORTED_SUFFIXES:
        return True
    if suffix in NON_IMAGE_SUFFIXES:
        return False
    return has_dicom_preamble(path)  # extension-less or UID-named DICOM files


def dicom_row_spacing_mm(ds: Any, plausible_mm: tuple[float, float] = (0.01, 1.0)) -> Optional[float]:
    """Row spacing from ImagerPixelSpacing, else PixelSpacing, when present and within
    ``plausible_mm``; None otherwise. The plain stored value, for tools that only need a scale
    (dataset conversion, simulator backgrounds); reading a mammogram uses :func:`_dicom_spacing`,
    which also applies the magnification factor and reports where the spacing came from."""
    lo, hi = plausible_mm
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        value = ds.get(keyword)
        try:
            spacing = float(value[0]) if value is not None else None
        except (TypeError, ValueError, IndexError):
            spacing = None
        if spacing is not None and lo <= spacing <= hi:
            return spacing
    return None


def find_images(inputs: Sequence[PathLike], recursive: bool = True) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders into the image files to read, plus the inputs that are missing.

    A file named explicitly is always returned, whatever its suffix, so that reading it can say
    exactly why it is bad; files found inside folders are filtered (hidden files, DICOMDIR and
    obvious non-images skipped). The result is sorted and free of duplicates so that batch
    outputs are reproducible.
    """
    found: dict[str, Path] = {}
    missing: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(os.fspath(item))
        try:
            if path.is_file():
                found.setdefault(os.path.normpath(str(path)), path)
                continue
            if not path.exists():
                missing.append((path, "does not exist"))
                continue
            if not path.is_dir():
                missing.append((path, "is neither a file nor a folder"))
                continue
        except OSError as exc:
            missing.append((path, f"cannot be accessed ({exc.strerror or exc})"))
            continue
        errors: list[OSError] = []
        for root, dirs, files in os.walk(path, onerror=errors.append):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
            for fname in files:
                candidate = Path(root) / fname
                if candidate.is_file() and _is_candidate(candidate):
                    found.setdefault(os.path.normpath(str(candidate)), candidate)
        for err in errors:
            missing.append((Path(err.filename) if err.filename else path, f"cannot be read ({err.strerror or err})"))
    images = [found[k] for k in sorted(found)]
    return images, missing
