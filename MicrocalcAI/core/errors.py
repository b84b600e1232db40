"""The exceptions MicrocalcAI raises on purpose.

Every error a user can cause (a bad file, a wrong option, a tampered weights file) is a
subclass of :class:`MicrocalcAIError`, so a batch can catch exactly these, report them in one
line and go on, while genuine bugs still surface as tracebacks.
"""

from __future__ import annotations

__all__ = [
    "CancelledError",
    "ChecksumError",
    "DatasetError",
    "InputError",
    "MicrocalcAIError",
    "ModelError",
    "NotAMammogramError",
    "OutputError",
    "SpacingError",
    "UnreadableFileError",
]


class MicrocalcAIError(Exception):
    """Base class of every error MicrocalcAI raises deliberately."""


class InputError(MicrocalcAIError):
    """An input cannot be used: unreadable, corrupt, empty or not a mammogram."""


class UnreadableFileError(InputError):
    """The file is missing, empty, truncated or corrupt, or its format is unknown."""


class NotAMammogramError(InputError):
    """The file is readable but is not a 2-D grey-scale projection image (CT, US, colour, 3-D...)."""


class SpacingError(InputError):
    """A pixel spacing is missing, non-positive or implausible for a mammogram."""


class OutputError(MicrocalcAIError, OSError):
    """An output file cannot be written (folder missing or read-only, disk full, bad name)."""


class DiskFullError(OutputError):
    """The output file system is full or over quota (ENOSPC/EDQUOT).

    Unlike other output errors this stops a batch at once: every further image would be
    analysed only to fail at its first write.
    """


class ModelError(MicrocalcAIError):
    """A model manifest or weights file is missing, malformed or does not match its checksum."""


class ChecksumError(ModelError):
    """The weights file's sha256 differs from the one recorded in the manifest."""


class DatasetError(MicrocalcAIError):
    """A training/evaluation dataset (COCO file, images) is malformed."""


class CancelledError(MicrocalcAIError):
    """The user cancelled a long-running operation through the progress callback."""
