"""A full output disk stops a batch at once, in one clear line, and leaves no half files."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from _disk_helpers import nearly_full_disk

from MicrocalcAI.cli import main as cli_main
from MicrocalcAI.core.atomic import atomic_write_bytes
from MicrocalcAI.core.batch import run_batch
from MicrocalcAI.core.errors import DiskFullError, OutputError
from MicrocalcAI.core.pipeline import Analyzer


def _inputs(tmp_path: Path, n: int = 3) -> Path:
    from _train_helpers import simulate_tiny

    data = tmp_path / "in"
    data.mkdir()
    for path in sorted((simulate_tiny(tmp_path / "sim", n_images=n, seed=3).parent / "images").glob("*.dcm")):
        shutil.copy(path, data / path.name)
    return data


def _no_half_files(out: Path) -> None:
    assert not [p for p in out.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_enospc_from_the_real_write_path_is_a_disk_full_error(tmp_path, monkeypatch):
    """Fault injection where no file system can be mounted: fsync reports ENOSPC, EDQUOT, EIO."""
    target = tmp_path / "a.json"
    target.write_bytes(b"old")
    real_fsync = os.fsync
    for code, error in ((errno.ENOSPC, DiskFullError), (errno.EDQUOT, DiskFullError), (errno.EIO, OutputError)):

        def failing_fsync(fd: int, code: int = code) -> None:
            real_fsync(fd)
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(error) as caught:
            atomic_write_bytes(target, b"new content")
        assert isinstance(caught.value, DiskFullError) == (error is DiskFullError)
        assert target.read_bytes() == b"old"  # the earlier file is untouched
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary file left


def test_full_disk_stops_the_local_batch_at_once(tmp_path, capsys):
    data = _inputs(tmp_path)
    with nearly_full_disk(tmp_path / "disk") as out:
        messages: list[str] = []
        with pytest.raises(DiskFullError, match="disk full") as caught:
            run_batch([data], out, analyzer=Analyzer(device="cpu"), progress=lambda f, m: messages.append(m))
        assert "batch stopped after 0 of 3" in str(caught.value)
        assert not [m for m in messages if m.startswith(("[2/", "[3/"))]  # nothing analysed after the failure
        _no_half_files(out)

        code = cli_main(["detect", str(data), "--out", str(out), "--device", "cpu", "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "disk full" in err[0], err
        _no_half_files(out)


def test_full_disk_while_writing_dicom_objects_stops_the_batch(tmp_path, monkeypatch):
    """The DICOM step is an output like the JSON: a full disk there stops the batch too."""
    sample = Path(__file__).resolve().parent.parent / "Resources" / "Samples" / "sim_R_CC.dcm"
    data = tmp_path / "in"
    data.mkdir()
    shutil.copy(sample, data / sample.name)
    out = tmp_path / "out"
    analyzer = Analyzer(device="cpu")
    first = run_batch([data], out, analyzer=analyzer)  # JSON and overlay, no DICOM yet
    assert first.analysed and not first.failed
    real_fsync = os.fsync

    def fsync_full_for_dicom(fd: int) -> None:  # only the DICOM objects find the disk full
        real_fsync(fd)
        if ".dcm" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync_full_for_dicom)
    with pytest.raises(DiskFullError):  # the skipped image's missing DICOM objects hit the full disk
        run_batch([data], out, analyzer=analyzer, dicom=True)
    _no_half_files(out)


def test_a_batch_threshold_outside_0_1_is_refused_before_any_image(tmp_path):
    from MicrocalcAI.core.errors import InputError

    with pytest.raises(InputError, match=r"score threshold must be in \[0, 1\], got 1.5"):
        run_batch([tmp_path], tmp_path / "out", score_threshold=1.5, device="cpu")
