"""Fuzz / property tests of read_mammogram: whatever the bytes of a file, the only exception that
may escape is a MicrocalcAIError (a one-line user error), never a crash from pydicom, Pillow,
a JPEG/RLE decoder or numpy.

Mutations are seeded so that any failure names the seed that reproduces it:
``_mutate(BASES[name], random.Random(seed))``.
"""

from __future__ import annotations

import random
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reader_helpers import make_mammo_dicom, make_png, mammo_like  # noqa: E402

from MicrocalcAI.core.errors import MicrocalcAIError  # noqa: E402
from MicrocalcAI.core.read import parse_laterality_view, read_mammogram  # noqa: E402
from MicrocalcAI.core.records import Mammogram  # noqa: E402

N_CASES = 1200
INTERESTING_US = [
    0,
    1,
    2,
    3,
    7,
    8,
    12,
    15,
    16,
    17,
    24,
    31,
    32,
    33,
    63,
    64,
    95,
    96,
    97,
    127,
    128,
    255,
    256,
    4096,
    32767,
    32768,
    65535,
]

# (group, element) -> tag bytes as written in an explicit VR little endian stream.
DICOM_US_FIELDS = {
    "SamplesPerPixel": (0x0028, 0x0002),
    "Rows": (0x0028, 0x0010),
    "Columns": (0x0028, 0x0011),
    "BitsAllocated": (0x0028, 0x0100),
    "BitsStored": (0x0028, 0x0101),
    "HighBit": (0x0028, 0x0102),
    "PixelRepresentation": (0x0028, 0x0103),
}
DICOM_TEXT_FIELDS = {
    "TransferSyntaxUID": ((0x0002, 0x0010), [
        "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.1.99", "1.2.3", "", "garbage",
    ]),
    "PhotometricInterpretation": ((0x0028, 0x0004), [
        "MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR", "", "XYZ", "MONOCHROME",
    ]),
    "Modality": ((0x0008, 0x0060), ["MG", "CT", "DX", "", "SR", "mg"]),
    "ImagerPixelSpacing": ((0x0018, 0x1164), ["0.1\\0.1", "0", "-1\\-1", "abc", "1e308\\1e308", "nan\\nan", "0.1"]),
    "ImageLaterality": ((0x0020, 0x0062), ["L", "R", "B", "", "LEFT", "\x00\x00"]),
}  # fmt: skip


def _tag_bytes(tag: tuple[int, int]) -> bytes:
    return struct.pack("<HH", *tag)


def _find_element(data: bytes, tag: tuple[int, int]) -> int:
    """Offset of an explicit-VR short-form element (tag, 2-char VR, 2-byte length), or -1."""
    start = 0
    pattern = _tag_bytes(tag)
    while True:
        pos = data.find(pattern, start)
        if pos < 0 or pos + 8 > len(data):
            return -1
        if data[pos + 4 : pos + 6].isalpha():
            return pos
        start = pos + 1


def _set_element(data: bytearray, tag: tuple[int, int], value: bytes) -> str:
    pos = _find_element(bytes(data), tag)
    if pos < 0:
        return "tag absent"
    length = struct.unpack("<H", data[pos + 6 : pos + 8])[0]
    if len(value) % 2:
        value += b"\x00" if tag[0] == 0x0002 else b" "
    data[pos + 6 : pos + 8 + length] = struct.pack("<H", len(value)) + value
    return "ok"


# --------------------------------------------------------------------------------------------
# Mutators: each takes the base bytes and a seeded RNG and returns (bytes, description)
# --------------------------------------------------------------------------------------------


def _flip_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    n = rng.choice([1, 2, 4, 16, 64])
    for _ in range(n):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out), f"flip {n} bytes"


def _flip_header_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    limit = min(len(out), 1200)  # the header, where structure lives
    n = rng.choice([1, 2, 3, 8])
    for _ in range(n):
        out[rng.randrange(limit)] ^= 1 << rng.randrange(8)
    return bytes(out), f"flip {n} header bits"


def _truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    cut = rng.choice([rng.randrange(len(data)), rng.randrange(min(len(data), 1500)), len(data) - rng.randrange(1, 64)])
    return data[: max(0, cut)], f"truncate at {cut}"


def _insert(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    pos = rng.randrange(len(data))
    blob = bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 3, 8, 100])))
    return data[:pos] + blob + data[pos:], f"insert {len(blob)} bytes at {pos}"


def _delete(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    pos = rng.randrange(len(data))
    n = rng.choice([1, 2, 4, 17, 500])
    return data[:pos] + data[pos + n :], f"delete {n} bytes at {pos}"


def _dicom_us_field(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    changes = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        name = rng.choice(sorted(DICOM_US_FIELDS))
        value = rng.choice(INTERESTING_US) if rng.random() < 0.8 else rng.randrange(65536)
        status = _set_element(out, DICOM_US_FIELDS[name], struct.pack("<H", value))
        changes.append(f"{name}={value} ({status})")
    return bytes(out), "; ".join(changes)


def _dicom_text_field(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    name = rng.choice(sorted(DICOM_TEXT_FIELDS))
    tag, values = DICOM_TEXT_FIELDS[name]
    value = rng.choice(values)
    status = _set_element(out, tag, value.encode("latin-1"))
    return bytes(out), f"{name}={value!r} ({status})"


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        ctype = data[pos + 4 : pos + 8]
        chunks.append((ctype, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def _png_build(chunks: list[tuple[bytes, bytes]], fix_crc: bool = True) -> bytes:
    out = bytearray(b"\x89PNG\r\n\x1a\n")
    for ctype, body in chunks:
        crc = zlib.crc32(ctype + body) & 0xFFFFFFFF
        out += struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", crc if fix_crc else crc ^ 1)
    return bytes(out)


def _png_ihdr(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    chunks = _png_chunks(data)
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        return _flip_bytes(data, rng)  # an earlier mutation destroyed the IHDR
    ctype, body = chunks[0]
    width, height, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", body)
    field = rng.choice(["width", "height", "size", "depth", "colour", "comp", "filter", "interlace"])
    big = [0, 1, 63, 64, 95, 97, 200, 65535, 30000, 2**31 - 1, 2**32 - 1]
    if field == "width":
        width = rng.choice(big)
    elif field == "height":
        height = rng.choice(big)
    elif field == "size":
        width, height = rng.choice(big), rng.choice(big)
    elif field == "depth":
        depth = rng.choice([0, 1, 2, 4, 8, 16, 3, 32, 255])
    elif field == "colour":
        colour = rng.choice([0, 1, 2, 3, 4, 6, 7, 255])
    elif field == "comp":
        comp = rng.choice([1, 255])
    elif field == "filter":
        filt = rng.choice([1, 255])
    else:
        interlace = rng.choice([1, 2, 255])
    chunks[0] = (ctype, struct.pack(">IIBBBBB", width, height, depth, colour, comp, filt, interlace))
    fix = rng.random() < 0.9
    return _png_build(
        chunks, fix_crc=fix
    ), f"IHDR {field}: {width}x{height} depth {depth} colour {colour} ({'crc ok' if fix else 'bad crc'})"


def _png_idat(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    chunks = _png_chunks(data)
    idx = [i for i, (t, b) in enumerate(chunks) if t == b"IDAT" and b]
    if not idx:
        return _flip_bytes(data, rng)
    i = rng.choice(idx)
    body = bytearray(chunks[i][1])
    what = rng.choice(["flip", "cut", "drop", "dup", "raw-flip"])
    if what == "flip":
        for _ in range(rng.choice([1, 4, 32])):
            body[rng.randrange(len(body))] = rng.randrange(256)
        chunks[i] = (b"IDAT", bytes(body))
    elif what == "cut":
        chunks[i] = (b"IDAT", bytes(body[: rng.randrange(len(body))]))
    elif what == "drop":
        del chunks[i]
    elif what == "dup":
        chunks.insert(i, chunks[i])
    else:  # valid zlib stream of wrong/garbled filtered scanlines
        try:
            raw = bytearray(zlib.decompress(bytes(body)))
        except zlib.error:  # an earlier mutation already broke the stream
            raw = bytearray(body)
        if not raw:
            return _png_build(chunks), "IDAT raw-flip of empty data"
        for _ in range(rng.choice([1, 8, 64])):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        if rng.random() < 0.3:
            raw = raw[: rng.randrange(len(raw))]
        chunks[i] = (b"IDAT", zlib.compress(bytes(raw)))
    return _png_build(chunks), f"IDAT {what}"


def _png_chunk_order(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    chunks = _png_chunks(data)
    if len(chunks) < 2:
        return _flip_bytes(data, rng)
    what = rng.choice(["drop-IEND", "drop-IHDR", "swap", "unknown-critical", "plte", "big-text"])
    if what == "drop-IEND":
        chunks = chunks[:-1]
    elif what == "drop-IHDR":
        chunks = chunks[1:]
    elif what == "swap" and len(chunks) > 2:
        chunks[0], chunks[1] = chunks[1], chunks[0]
    elif what == "unknown-critical":
        chunks.insert(1, (b"ABCD", b"\x00" * 8))
    elif what == "plte":
        chunks.insert(1, (b"PLTE", bytes(rng.randrange(256) for _ in range(rng.choice([3, 5, 768, 771])))))
    else:
        chunks.insert(1, (b"zTXt", b"k\x00\x00" + zlib.compress(b"A" * 200000)))
    return _png_build(chunks), f"chunks {what}"


GENERIC: list[Callable[[bytes, random.Random], tuple[bytes, str]]] = [
    _flip_bytes,
    _flip_header_bytes,
    _truncate,
    _insert,
    _delete,
]
DICOM_MUTATORS = GENERIC + [_dicom_us_field, _dicom_us_field, _dicom_text_field, _dicom_text_field]
PNG_MUTATORS = GENERIC + [_png_ihdr, _png_ihdr, _png_idat, _png_idat, _png_chunk_order]


def _mutate(base: bytes, kind: str, rng: random.Random) -> tuple[bytes, str]:
    mutators = DICOM_MUTATORS if kind == "dicom" else PNG_MUTATORS
    data, steps = base, []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if not data:
            break
        data, what = rng.choice(mutators)(data, rng)
        steps.append(what)
    return data, " + ".join(steps)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, tuple[str, str, bytes]]:
    """name -> (kind, suffix, bytes) of small valid files to mutate."""
    d = tmp_path_factory.mktemp("fuzz_bases")
    px16 = mammo_like(96, 96, dtype=np.uint16, seed=11)
    px8 = mammo_like(96, 96, dtype=np.uint8, seed=12)
    out = {
        "dicom-native16": (
            "dicom",
            ".dcm",
            make_mammo_dicom(d / "a.dcm", px16, transfer_syntax=ExplicitVRLittleEndian).read_bytes(),
        ),
        "dicom-rle16": ("dicom", ".dcm", make_mammo_dicom(d / "b.dcm", px16, transfer_syntax=RLELossless).read_bytes()),
        "dicom-native8-m1": (
            "dicom",
            ".dcm",
            make_mammo_dicom(d / "c.dcm", px8, photometric="MONOCHROME1").read_bytes(),
        ),
        "dicom-rle8": ("dicom", ".dcm", make_mammo_dicom(d / "d.dcm", px8, transfer_syntax=RLELossless).read_bytes()),
        "dicom-jpegls16": (
            "dicom",
            ".dcm",
            make_mammo_dicom(d / "e.dcm", px16, transfer_syntax=JPEGLSLossless).read_bytes(),
        ),
        "png16": ("png", ".png", make_png(d / "f.png", px16).read_bytes()),
        "png8": ("png", ".png", make_png(d / "g.png", px8).read_bytes()),
    }
    for name, (_kind, suffix, data) in out.items():  # the bases themselves must read
        path = d / f"check_{name}{suffix}"
        path.write_bytes(data)
        assert isinstance(read_mammogram(path), Mammogram)
    return out


def test_fuzz_mutated_dicom_and_png_only_raise_microcalcai_errors(tmp_path, bases):
    names = sorted(bases)
    failures: list[str] = []
    outcomes = {"read": 0, "rejected": 0}
    run = 0
    for seed in range(N_CASES):
        rng = random.Random(seed)
        name = names[seed % len(names)]
        kind, suffix, base = bases[name]
        data, how = _mutate(base, kind, rng)
        path = tmp_path / f"fuzz{suffix}"
        path.write_bytes(data)
        run += 1
        try:
            mam = read_mammogram(path)
        except MicrocalcAIError as exc:
            outcomes["rejected"] += 1
            message = str(exc)
            if "\n" in message or "fuzz" not in message:
                failures.append(f"seed {seed} ({name}: {how}): error message not one line naming the file: {message!r}")
        except BaseException as exc:  # noqa: BLE001 - exactly what this test hunts for
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures.append(f"seed {seed} ({name}: {how}): {type(exc).__name__}: {exc}"[:400])
        else:
            outcomes["read"] += 1
            if not (isinstance(mam.pixels, np.ndarray) and mam.pixels.ndim == 2 and min(mam.pixels.shape) >= 64):
                failures.append(
                    f"seed {seed} ({name}: {how}): accepted a bad image of shape {getattr(mam.pixels, 'shape', None)}"
                )
    assert run >= 1000
    # Both outcomes must occur, or the mutator is not exercising the reader at all.
    assert outcomes["read"] > 50 and outcomes["rejected"] > 300, outcomes
    assert not failures, f"{len(failures)} of {run} mutated files escaped: \n" + "\n".join(failures[:15])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(min_size=0, max_size=3000),
    suffix=st.sampled_from([".dcm", ".png", ".tif", ".jpg", ".pgm", ".nrrd", ".mha", ".nii", ""]),
)
def test_arbitrary_bytes_with_any_suffix(tmp_path, data, suffix):
    path = tmp_path / f"blob{suffix}"
    path.write_bytes(data)
    try:
        read_mammogram(path)
    except MicrocalcAIError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from(
        [
            b"\0" * 128 + b"DICM",
            b"\x89PNG\r\n\x1a\n",
            b"II*\x00",
            b"MM\x00*",
            b"\xff\xd8\xff",
            b"P5\n",
            b"NRRD0004\n",
            b"ObjectType = Image\n",
        ]
    ),
    tail=st.binary(max_size=2000),
)
def test_valid_magic_followed_by_garbage(tmp_path, prefix, tail):
    path = tmp_path / "magic.img"
    path.write_bytes(prefix + tail)
    try:
        read_mammogram(path)
    except MicrocalcAIError:
        pass


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=80))
def test_parse_laterality_view_total(text):
    lat, view = parse_laterality_view(text)
    assert lat in (None, "L", "R")
    assert view is None or (view.isupper() and view.isalpha())
