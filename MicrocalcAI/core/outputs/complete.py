"""Whether an image's outputs are complete: what lets a re-run skip a finished image.

Anything doubtful (unparsable or older-schema JSON, missing or cut overlay) answers False,
so the image is redone rather than trusted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from MicrocalcAI.core.outputs.findings_json import SCHEMA_VERSION
from MicrocalcAI.core.outputs.paths import PathLike, json_path, overlay_path

__all__ = ["outputs_complete"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_complete(path: Path) -> bool:
    """True when the file starts with the PNG signature and ends with the IEND chunk."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            fh.seek(0, os.SEEK_END)
            if fh.tell() < 20:
                return False
            fh.seek(-12, os.SEEK_END)
            tail = fh.read(12)
    except OSError:
        return False
    return head == _PNG_SIGNATURE and tail[4:8] == b"IEND"


def outputs_complete(name: str, out_dir: PathLike) -> bool:
    """Whether image ``name`` already has a current-schema JSON and a whole overlay PNG.

    Lets a re-run skip finished images; anything doubtful (unparsable or older-schema JSON,
    missing or cut overlay) answers False so the image is redone.
    """
    try:
        doc = json.loads(json_path(name, out_dir).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
        return False
    return _png_complete(overlay_path(name, out_dir))
