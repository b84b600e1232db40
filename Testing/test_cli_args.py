"""Command-line argument types: a wrong value stops argparse with a message naming the option's
unit, before any work starts (no output folder, no model load)."""

from __future__ import annotations

import argparse

import pytest

from MicrocalcAI.cli import main as cli_main
from MicrocalcAI.cli.common import positive_count_arg


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("3", 3), (" 4 ", 4), ("+2", 2)])
def test_positive_count_accepts_whole_numbers_from_one(text, value):
    assert positive_count_arg("workers")(text) == value


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5", ""])
def test_positive_count_rejects_and_names_the_unit(bad):
    with pytest.raises(argparse.ArgumentTypeError, match=f"whole number of workers \\(at least 1\\), got '{bad}'"):
        positive_count_arg("workers")(bad)


@pytest.mark.parametrize("bad", ["0", "two"])
def test_detect_workers_error_stops_before_any_output(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["detect", str(tmp_path), "--out", str(tmp_path / "out"), "--workers", bad])
    assert exc.value.code == 2
    assert (
        f"--workers: expected a whole number of worker processes (at least 1), got '{bad}'" in capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", ["0", "x"])
def test_train_nproc_error_names_processes(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", str(tmp_path / "config.json"), "--nproc", bad])
    assert exc.value.code == 2
    assert f"--nproc: expected a whole number of processes (at least 1), got '{bad}'" in capsys.readouterr().err
