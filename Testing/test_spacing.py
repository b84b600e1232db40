"""The one pixel-spacing validator (MicrocalcAI.core.spacing), as every stage uses it."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from MicrocalcAI.cli.common import spacing_arg
from MicrocalcAI.core.errors import SpacingError
from MicrocalcAI.core.findings.specks import segment_specks
from MicrocalcAI.core.read import read_mammogram
from MicrocalcAI.core.spacing import SPACING_RANGE_MM, check_spacing, is_plausible


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
