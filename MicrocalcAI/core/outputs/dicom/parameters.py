"""The algorithm parameters both SRs carry, so that an SR alone can be read back into findings.

TID 4019 (CAD SR) and TID 4019 as used by TID 1500 (Algorithm Identification) allow free-text
"Algorithm Parameters". We write ``key=value`` lines: the exact model (sha256, backbone,
canonical spacing), the score threshold, and the input description the run used (stored
image shape, pixel spacing and its source, laterality and view and where they came from),
and the run's warnings (one ``warning=`` line each), which an SR has no standard place for
but a reader needs to rebuild the findings.
"""

from __future__ import annotations

from typing import Optional

from MicrocalcAI.core.records import ImageFindings

__all__ = ["algorithm_parameters", "parse_algorithm_parameters"]


def _text(value: object) -> str:
    return "" if value is None else str(value)


def algorithm_parameters(f: ImageFindings) -> list[str]:
    """``key=value`` texts describing how the findings were made (see module docstring)."""
    pairs = [
        ("model_sha256", f.model.sha256),
        ("model_backbone", f.model.backbone),
        ("model_spacing_mm", repr(float(f.model.spacing_mm))),
        ("score_threshold", repr(float(f.score_threshold))),
        ("image_shape", f"{int(f.image_shape[0])},{int(f.image_shape[1])}"),
        ("spacing_mm", f"{float(f.spacing_mm[0])!r},{float(f.spacing_mm[1])!r}"),
        ("spacing_source", f.spacing_source),
        ("photometric", f.photometric),
        ("laterality", _text(f.laterality)),
        ("laterality_source", _text(f.laterality_source)),
        ("view", _text(f.view)),
        ("view_source", _text(f.view_source)),
        ("presentation_intent", _text(f.presentation_intent)),
        ("risk_category", f.risk.category),
        *[("warning", w) for w in f.warnings],
    ]
    return [f"{key}={value}" for key, value in pairs]


def parse_algorithm_parameters(texts: list[str]) -> tuple[dict[str, Optional[str]], list[str]]:
    """The ``key=value`` texts back as a dict (empty values become None) and the warnings."""
    out: dict[str, Optional[str]] = {}
    warnings: list[str] = []
    for text in texts:
        key, sep, value = str(text).partition("=")
        if not sep:
            continue
        if key.strip() == "warning":
            warnings.append(value)
        else:
            out[key.strip()] = value if value != "" else None
    return out, warnings
