"""The ``convert_dataset`` registry: dataset kind -> adapter, with the spellings users type.

To add a dataset: write ``datasets/<name>.py`` with a ``convert_<name>(source, out_json, *,
progress=None, strict=False, ...) -> ConversionReport`` built on
:class:`MicrocalcAI.datasets.common.CocoBuilder`, and add it to :data:`CONVERTERS` here.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from MicrocalcAI.core.errors import DatasetError
from MicrocalcAI.core.records import ProgressCallback
from MicrocalcAI.datasets.cbis_ddsm import convert_cbis_ddsm
from MicrocalcAI.datasets.coco_import import convert_coco
from MicrocalcAI.datasets.common import ConversionReport, PathLike
from MicrocalcAI.datasets.inbreast import convert_inbreast
from MicrocalcAI.datasets.mini_mias import convert_mini_mias
from MicrocalcAI.datasets.vindr_mammo import convert_vindr_mammo

__all__ = ["CONVERTERS", "KINDS", "convert_dataset", "normalise_kind"]

log = logging.getLogger(__name__)

#: Dataset kinds understood by :func:`convert_dataset`.
KINDS = ("cbis-ddsm", "inbreast", "vindr-mammo", "mini-mias", "coco")
#: Other spellings users type for the same kinds.
_KIND_ALIASES = {
    "cbis": "cbis-ddsm", "cbisddsm": "cbis-ddsm", "ddsm": "cbis-ddsm",
    "vindr": "vindr-mammo", "vindrmammo": "vindr-mammo",
    "mias": "mini-mias", "minimias": "mini-mias",
}  # fmt: skip

CONVERTERS: dict[str, Callable[..., ConversionReport]] = {
    "cbis-ddsm": convert_cbis_ddsm,
    "inbreast": convert_inbreast,
    "vindr-mammo": convert_vindr_mammo,
    "mini-mias": convert_mini_mias,
    "coco": convert_coco,
}


def normalise_kind(kind: str) -> str:
    """The canonical dataset kind for what a user typed ("CBIS_DDSM", "vindr", "MIAS" ...)."""
    text = str(kind).strip().lower().replace("_", "-")
    if text in CONVERTERS:
        return text
    squeezed = text.replace("-", "")
    for name in CONVERTERS:
        if name.replace("-", "") == squeezed:
            return name
    if squeezed in _KIND_ALIASES:
        return _KIND_ALIASES[squeezed]
    raise DatasetError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")


def convert_dataset(
    kind: str,
    source: PathLike,
    out_json: PathLike,
    *,
    progress: Optional[ProgressCallback] = None,
    **options: Any,
) -> ConversionReport:
    """Convert the dataset at ``source`` of the given ``kind`` into the COCO file ``out_json``.

    ``options`` are the keyword options of the matching ``convert_*`` function; an option that
    kind does not take is a :class:`DatasetError` (a typo must not be silently ignored).
    Options given as None are treated as not given, so a CLI can pass every flag through.
    """
    name = normalise_kind(kind)
    converter = CONVERTERS[name]
    accepted = set(inspect.signature(converter).parameters) - {"source", "out_json", "progress"}
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise DatasetError(f"option(s) {unknown} do not apply to {name}; it takes {sorted(accepted)}")
    log.info("converting %s dataset %s -> %s", name, source, out_json)
    return converter(Path(source), Path(out_json), progress=progress, **given)
