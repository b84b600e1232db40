"""All-or-nothing file writes, shared by every module that writes files.

An interrupted run (Ctrl-C, crash, full disk) must never leave half a JSON, PNG, DICOM,
weights file or checkpoint behind: a half file would later be mistaken for a finished one.
Every writer goes through here: data goes to a temporary file in the target's folder (same
file system, so the final ``os.replace`` is atomic), is flushed to disk, then renamed over the
target; on any error the temporary file is removed and an existing target is left untouched.
"""

from __future__ import annotations

import errno
import glob
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Union

from MicrocalcAI.core.errors import DiskFullError, MicrocalcAIError, OutputError

__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "output_error",
    "remove_temporaries",
    "staged_path",
]

__all__ = [
    "PathLike",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "staged_path",
]


PathLike = Union[str, "os.PathLike[str]"]

#: errno values meaning "the output file system has no room": the batch must stop, not go on.
_NO_SPACE = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)


def output_error(path: PathLike, exc: OSError) -> OutputError:
    """The error to raise for a failed write: :class:`DiskFullError` when the disk is full."""
    if exc.errno in _NO_SPACE:
        return DiskFullError(f"output disk full or over quota ({exc.strerror}) writing {path}")
    return OutputError(f"cannot write {path}: {exc}")


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` would, racing other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


@contextmanager
def atomic_open(path: PathLike) -> Iterator[BinaryIO]:
    """A binary file whose content replaces ``path`` only if the ``with`` block completes.

    For writers that want a file object (``np.savez``, ``torch.save``, ``pydicom``): the data
    goes to a temporary file in the target's folder (same file system, so the final
    ``os.replace`` is atomic), is flushed to disk, then renamed over the target. On any error
    the temporary file is removed and an existing target is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise output_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, MicrocalcAIError):
            raise output_error(path, exc) from exc
        raise


@contextmanager
def staged_path(path: PathLike) -> Iterator[Path]:
    """A hidden path beside ``path`` that becomes ``path`` only if the ``with`` block completes.

    For a file that must be written *and then used* before it counts as finished (exported
    weights are loaded back and measured before their manifest entry exists): the block writes
    and reads the staged file; on success it is renamed over ``path``, on any error it is
    removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    staged = path.with_name(f".{path.stem}.staged{path.suffix}")
    try:
        yield staged
        os.replace(staged, path)
    except BaseException as exc:
        staged.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, MicrocalcAIError):
            raise output_error(path, exc) from exc
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` all-or-nothing (see :func:`atomic_open`)."""
    with atomic_open(path) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 text all-or-nothing (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def remove_temporaries(path: PathLike) -> int:
    """Delete temporary files that :func:`atomic_open` left for ``path``; return how many.

    A process killed outright (SIGKILL, out of memory) cannot clean up, so its temporary file
    stays beside the target (the target itself is never half written). Call this only when
    no live writer of ``path`` remains, e.g. after a batch.
    """
    path = Path(path)
    removed = 0
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            tmp.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed
