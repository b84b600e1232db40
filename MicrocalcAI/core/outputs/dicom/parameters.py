"""The algorithm parameters both SRs carry, so that an SR alone can be read back into findings.

TID 4019 (CAD SR) and TID 4019 as used by TID 1500 (Algorithm Identification) allow free-text
"Algorithm Parameters". We write ``key=value`` lines: the exact model (sha256, backbone,
canonical spacing, and the checksum of the manifest entry's settings), the score threshold, and the input description the run used (stored
image shape, pixel spacing and its source, laterality and view and where they came from),
and the run's warnings (one ``warning=`` line each), which an SR has no standard place for
but a reader needs to rebuild the findings. When the model ran its out-of-distribution
check, its result follows as ``ood_score``, ``ood_threshold``, ``ood_flagged`` and one
``ood_reason=`` line per reason (``ood_measurement=<name>:<value>`` for its measurements),
so that an SR alone says the image was "indeterminate" and why.
"""

from __future__ import annotations

from typing import Optional

from MicrocalcAI.core.records import ImageFindings, OodCheck

__all__ = ["algorithm_parameters", "ood_from_parameters", "parse_algorithm_parameters"]

_REPEATED = ("warning", "ood_reason", "ood_measurement")


def _text(value: object) -> str:
    return "" if value is None else str(value)


def algorithm_parameters(f: ImageFindings) -> list[str]:
    """``key=value`` texts describing how the findings were made (see module docstring)."""
    pairs = [
        ("model_sha256", f.model.sha256),
        ("model_settings_sha256", _text(f.model.settings_sha256)),
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
    if f.ood is not None:
        pairs += [
            ("ood_score", repr(float(f.ood.score))),
            ("ood_threshold", repr(float(f.ood.threshold))),
            ("ood_flagged", "true" if f.ood.flagged else "false"),
            *[("ood_reason", r) for r in f.ood.reasons],
            *[("ood_measurement", f"{k}:{float(v)!r}") for k, v in f.ood.measurements.items()],
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
        elif key.strip() in _REPEATED:
            continue  # read by ood_from_parameters
        else:
            out[key.strip()] = value if value != "" else None
    return out, warnings


def ood_from_parameters(texts: list[str]) -> Optional[OodCheck]:
    """The out-of-distribution check written by :func:`algorithm_parameters`, or None when
    the SR has none (the model shipped no OOD reference, or an older MicrocalcAI wrote it)."""
    values: dict[str, str] = {}
    reasons: list[str] = []
    measurements: dict[str, float] = {}
    for text in texts:
        key, sep, value = str(text).partition("=")
        key = key.strip()
        if not sep:
            continue
        if key == "ood_reason":
            reasons.append(value)
        elif key == "ood_measurement":
            name, _, number = value.rpartition(":")
            measurements[name] = float(number)
        elif key in ("ood_score", "ood_threshold", "ood_flagged"):
            values[key] = value
    if "ood_score" not in values:
        return None
    return OodCheck(
        score=float(values["ood_score"]),
        threshold=float(values.get("ood_threshold", "nan")),
        flagged=values.get("ood_flagged") == "true",
        reasons=reasons,
        measurements=measurements,
    )
