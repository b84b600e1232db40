"""The one pixel-spacing validator (MicrocalcAI.core.spacing), as every stage uses it."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from MicrocalcAI.cli.common import spacing_arg
from MicrocalcAI.core.errors import SpacingError
from MicrocalcAI.core.findings.specks import segment_specks
from MicrocalcAI.core.read import read_mammogram
from MicrocalcAI.core.spacing import SPACING_RANGE_MM, check_spacing, is_plausible, spacing_when_unknown


@pytest.mark.parametrize(
    "value, expected",
    [(0.07, (0.07, 0.07)), ((0.07, 0.065), (0.07, 0.065)), ([0.1, 0.2], (0.1, 0.2)), (np.float32(0.5), (0.5, 0.5))],
)
def test_a_number_or_a_pair_becomes_a_row_column_pair(value, expected):
    assert check_spacing(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["abc", (0.1,), (0.1, 0.1, 0.1), None, 0.0, -0.1, float("nan"), (0.1, float("inf"))])
def test_unusable_values_are_a_spacing_error_naming_what_was_checked(value):
    with pytest.raises(SpacingError, match="^scan.dcm: "):
        check_spacing(value, what="scan.dcm")


def test_the_plausible_range_applies_only_when_asked():
    assert check_spacing(5.0) == (5.0, 5.0)
    with pytest.raises(SpacingError, match="implausible"):
        check_spacing(5.0, plausible_mm=SPACING_RANGE_MM)
    assert is_plausible((0.02, 1.0)) and not is_plausible((0.019, 0.1))


def test_reader_cli_and_specks_share_the_rule(tmp_path):
    image = np.full((100, 80), 1000, dtype=np.uint16)
    with pytest.raises(SpacingError, match="implausible"):
        read_mammogram(image, spacing_mm=2.0)
    with pytest.raises(argparse.ArgumentTypeError, match="implausible"):
        spacing_arg("2.0")
    assert spacing_arg("0.07") == 0.07
    with pytest.raises(SpacingError, match="positive and finite"):
        segment_specks(np.zeros((20, 20), dtype=np.float32), (2.0, 2.0, 10.0, 10.0), (0.0, 0.1))


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((4560, 2864), 0.05),  # a CBIS-DDSM scan: 228 mm at the default, a whole mammogram
        ((2400, 1600), 0.05),  # 120 mm: a tight crop, or a 0.1 mm film; not told apart, the default stays
        ((1700, 1100), 0.05),  # 85 mm: a small procedural breast of the simulator at 0.05 mm
        ((1024, 1024), 0.2),  # a mini-MIAS-sized 0.2 mm frame: 51 mm at 0.05 mm, 205 mm at 0.2 mm
        ((1374, 1050), 0.2),  # a CBIS film delivered at 0.2 mm and padded
        ((12000, 9600), 0.025),  # 600 mm at 0.05 mm: a 0.025 mm scan
    ],
)
def test_an_unknown_spacing_is_the_models_unless_the_image_cannot_be_a_whole_mammogram_then(shape, expected):
    spacing, warning = spacing_when_unknown(shape, 0.05)
    assert spacing == (expected, expected)
    assert warning.startswith("pixel spacing unknown: assumed") and "--spacing" in warning
    if expected == 0.05:
        assert "model default" in warning
    else:
        long_mm = max(shape) * 0.05
        assert f"not the model's default 0.05 mm, at which the image would be {long_mm:.1f} mm long" in warning


def test_no_guess_beats_the_default_for_a_tiny_image_and_a_bad_default_is_refused():
    spacing, warning = spacing_when_unknown((60, 40), 0.2)  # 12 mm even at the coarsest guess
    assert spacing == (0.2, 0.2) and "although the image is then 12.0 mm long" in warning
    with pytest.raises(SpacingError, match="assumed pixel spacing"):
        spacing_when_unknown((1000, 1000), 0.0)
