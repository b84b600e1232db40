"""Calibration of the detector's two outputs, a property of the model (``ModelSpec.calibration``).

The raw network says "score 0.99, p_malignant 1.0" for almost every mark on real film; those
numbers rank lesions but are not probabilities. A model entry may therefore carry a
:class:`Calibration`, fitted on validation data at export
(:mod:`MicrocalcAI.training.calibration_fit`) and applied by
:func:`MicrocalcAI.core.detect.run.detect` right after the tiles are merged, so that every
score and p_malignant a user sees (JSON, overlay, Slicer, evaluation, risk) is calibrated.

* **p_malignant: temperature scaling.** The box head's p_malignant is the softmax over the two
  foreground logits, i.e. ``sigmoid(l_mal - l_ben)``; dividing that logit difference by a
  temperature ``T`` is exactly ``sigmoid(logit(p) / T)``, so it is applied to p itself, with
  no access to the logits needed. One parameter cannot overfit a few hundred validation
  lesions, it keeps the ranking (the benign-vs-malignant AUC is unchanged) and it keeps the
  malignant/benign label (p >= 0.5 iff logit >= 0).
* **Lesion score: Platt scaling** ``sigmoid(a * logit(s) + b)`` with ``a > 0``: the
  probability that a mark is a true calcification cluster. It is strictly increasing and
  invertible, which the engine relies on: merging keeps running on raw scores above the raw
  :data:`~MicrocalcAI.core.detect.manifest.MERGE_FLOOR`, a threshold on the calibrated
  scale selects exactly the lesions whose raw score is above its inverse (so re-thresholding
  in Slicer is still a filter on finished findings), and evaluation recovers the raw scores
  by inversion. Isotonic regression was not used: it is a step function (distinct scores
  collapse onto one value, so a threshold could no longer separate them and the raw scores
  cannot be recovered) and it overfits validation sets of this size.

An entry without calibration (e.g. 0.2.1) behaves as the identity: values pass through
unchanged, bit for bit. This module is imported by the manifest, which must import with the
standard library alone (Slicer start-up, the wheel check), so numpy is imported only where
values are mapped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SATURATION", "Calibration", "logit", "sigmoid"]

ArrayLike = Union[float, "np.ndarray"]

#: The network computes in float32, where a softmax saturates to exactly 0 or 1 beyond a logit
#: of about +-16.6; such values are read as ``SATURATION`` or ``1 - SATURATION`` (float32's
#: resolution next to 1) so that calibration still softens them instead of keeping "1.0".
SATURATION = 2.0**-24


def logit(p: ArrayLike) -> np.ndarray:
    """log(p / (1 - p)) in float64, p first clipped to [SATURATION, 1 - SATURATION]."""
    import numpy as np

    p = np.clip(np.asarray(p, dtype=np.float64), SATURATION, 1.0 - SATURATION)
    return np.log(p) - np.log1p(-p)


def sigmoid(x: ArrayLike) -> np.ndarray:
    """1 / (1 + exp(-x)), exact 0 and 1 at -+inf, no overflow warning (float64)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclass(frozen=True)
class Calibration:
    """Temperature for p_malignant, Platt ``(a, b)`` for the lesion score, and their provenance."""

    #: p_malignant -> sigmoid(logit(p) / temperature); > 1 softens, < 1 sharpens.
    temperature: float = 1.0
    #: score -> sigmoid(score_a * logit(score) + score_b); score_a > 0 keeps the order.
    score_a: float = 1.0
    score_b: float = 0.0
    #: What it was fitted on (dataset, n, date): shown in the model card and the manifest.
    fitted_on: str = ""

    def __post_init__(self) -> None:
        for name in ("temperature", "score_a", "score_b"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"calibration {name} must be a finite number, got {value!r}")
        if self.temperature <= 0 or self.score_a <= 0:
            raise ValueError(
                f"calibration temperature and score_a must be > 0 (order-preserving), got "
                f"{self.temperature} and {self.score_a}"
            )

    @property
    def is_identity(self) -> bool:
        return self.temperature == 1.0 and self.score_a == 1.0 and self.score_b == 0.0

    def p_malignant(self, raw: ArrayLike) -> np.ndarray:
        """Calibrated p_malignant of raw ones (unchanged when the temperature is 1)."""
        import numpy as np

        raw = np.asarray(raw, dtype=np.float64)
        if self.temperature == 1.0:
            return raw.copy()
        return sigmoid(logit(raw) / self.temperature)

    def raw_p_malignant(self, calibrated: ArrayLike) -> np.ndarray:
        """The inverse of :meth:`p_malignant`: the raw value a calibrated one came from (exact up
        to rounding, except for raw values that were saturated, see :data:`SATURATION`)."""
        import numpy as np

        calibrated = np.asarray(calibrated, dtype=np.float64)
        if self.temperature == 1.0:
            return calibrated.copy()
        return sigmoid(logit(calibrated) * self.temperature)

    def score(self, raw: ArrayLike) -> np.ndarray:
        """Calibrated lesion score of raw ones (unchanged for the identity)."""
        import numpy as np

        raw = np.asarray(raw, dtype=np.float64)
        if self.score_a == 1.0 and self.score_b == 0.0:
            return raw.copy()
        return sigmoid(self.score_a * logit(raw) + self.score_b)

    def raw_score(self, calibrated: ArrayLike) -> np.ndarray:
        """The inverse of :meth:`score`."""
        import numpy as np

        calibrated = np.asarray(calibrated, dtype=np.float64)
        if self.score_a == 1.0 and self.score_b == 0.0:
            return calibrated.copy()
        return sigmoid((logit(calibrated) - self.score_b) / self.score_a)

    def to_json(self) -> dict[str, Any]:
        return {
            "temperature": float(self.temperature),
            "score_a": float(self.score_a),
            "score_b": float(self.score_b),
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_json(cls, data: Any) -> Calibration:
        """A manifest's ``calibration`` object; a bad one raises ValueError naming the problem."""
        if not isinstance(data, dict):
            raise ValueError(f"'calibration' must be an object, got {type(data).__name__}")
        unknown = set(data) - {"temperature", "score_a", "score_b", "fitted_on"}
        if unknown:
            raise ValueError(f"'calibration' has unknown fields {sorted(unknown)}")

        def number(key: str, default: float) -> float:
            value = data.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"calibration {key} must be a number, got {value!r}")
            return float(value)

        return cls(
            temperature=number("temperature", 1.0),
            score_a=number("score_a", 1.0),
            score_b=number("score_b", 0.0),
            fitted_on=str(data.get("fitted_on", "")),
        )
