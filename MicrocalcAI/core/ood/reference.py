"""The out-of-distribution reference of a model, and the one number that says "unsure".

A reference is fitted once per model (:func:`fit_reference`, from images the model was
trained on, with the threshold chosen on images it was not trained on) and shipped next to
the weights as a side file whose sha256 the manifest entry records (``ModelSpec.ood``). It
holds two things:

- the training range of every input statistic (:mod:`MicrocalcAI.core.ood.statistics`),
  widened by a tolerance;
- the distribution of the training images' feature descriptors
  (:mod:`MicrocalcAI.core.ood.features`): mean, principal subspace (PCA), a Ledoit-Wolf
  shrunk covariance inside it, and the typical distance outside it.

The score (docs/confidence.md, "Out-of-distribution signal"):

    feature distance d = sqrt((m^2 / k + r^2 / r0^2) / 2)

where m is the Mahalanobis distance of the descriptor inside the k-dimensional principal
subspace, r the norm of what the subspace does not explain and r0 its root-mean-square over
the training images, so that both terms are about 1 for a training image and the distance
grows with either kind of strangeness (a known direction pushed far, or a new direction).
``OodCheck.score`` is d, raised to ``threshold * (1 + e)`` when an input statistic lies
outside its widened training range by a relative excess e (so any such statistic flags the
image, and the further out, the higher the score). ``flagged`` is ``score >= threshold``.

The side file is a NumPy ``.npz`` read with ``allow_pickle=False``: data, never code.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from MicrocalcAI.core.atomic import atomic_write_bytes
from MicrocalcAI.core.detect.manifest import ModelSpec, sha256_file
from MicrocalcAI.core.errors import ChecksumError, ModelError
from MicrocalcAI.core.ood.statistics import STATISTICS
from MicrocalcAI.core.records import OodCheck

__all__ = [
    "FORMAT",
    "LINEAR_STATISTICS",
    "LOWER_LIMIT_ONLY",
    "OodReference",
    "check_image",
    "feature_distance",
    "fit_reference",
    "load_reference",
    "read_reference",
    "reference_path",
    "save_reference",
    "statistic_excess",
]

log = logging.getLogger(__name__)

FORMAT = "microcalcai-ood-reference-1"
#: Statistics compared on a linear scale (the others are ratios: compared on a log scale).
LINEAR_STATISTICS = ("bits_used",)
#: Statistics with only a lower limit: more grey levels than training is no problem, and a
#: larger breast is more tiles of the same kind (the detector works tile by tile); fewer
#: levels, or less breast than any training image (a magnified spot view, a small crop), is.
LOWER_LIMIT_ONLY = ("bits_used", "breast_area_cm2")
#: Widening of the training range: log-scale statistics by a factor (1 + tolerance) either
#: side, bits_used by this many bits below (more bits than training is never a problem).
DEFAULT_TOLERANCE = 0.15
BITS_TOLERANCE = 0.5
_UNITS = {"spacing_mm": " mm", "breast_area_cm2": " cm2", "bits_used": " bits"}


@dataclass
class OodReference:
    """A fitted reference (see the module docstring for what each part is)."""

    model_sha256: str
    mean: np.ndarray  # (D,) training descriptor mean
    components: np.ndarray  # (k, D) orthonormal principal directions
    precision: np.ndarray  # (k, k) inverse of the Ledoit-Wolf covariance in the subspace
    residual_rms: float  # r0: rms norm of the training descriptors' out-of-subspace part
    ranges: dict[str, tuple[float, float]]  # widened training range per statistic
    threshold: float
    info: dict[str, Any] = field(default_factory=dict)


def feature_distance(reference: OodReference, descriptor: np.ndarray) -> float:
    """The feature distance d of one descriptor (about 1 for a training image)."""
    centred = np.asarray(descriptor, dtype=np.float64) - reference.mean
    if centred.shape != reference.mean.shape:
        raise ModelError(
            f"feature descriptor has {centred.size} values but the OOD reference expects {reference.mean.size}"
        )
    z = reference.components @ centred
    m2 = float(z @ reference.precision @ z)
    residual = centred - reference.components.T @ z
    r2 = float(residual @ residual) / max(reference.residual_rms**2, 1e-30)
    k = max(reference.components.shape[0], 1)
    return math.sqrt(max(0.5 * (m2 / k + r2), 0.0))


def statistic_excess(reference: OodReference, statistics: dict[str, float]) -> dict[str, float]:
    """Relative excess beyond the widened training range of each statistic that is outside it
    (0 < e; a statistic inside its range, unknown to the reference or not finite is absent)."""
    excess: dict[str, float] = {}
    for name, (low, high) in reference.ranges.items():
        value = statistics.get(name)
        if value is None or not math.isfinite(value):
            continue
        if name in LINEAR_STATISTICS:
            e = (low - value) / max(abs(low), 1e-9) if value < low else 0.0
        elif value <= 0:
            e = math.inf if low > 0 else 0.0
        else:
            e = max(low / value, value / high) - 1.0
        if e > 0:
            excess[name] = float(min(e, 1e6))
    return excess


def _describe(name: str, value: float, low: float, high: float) -> str:
    unit = _UNITS.get(name, "")
    label = STATISTICS.get(name, name).split(":")[0].split(",")[0]
    if name in LOWER_LIMIT_ONLY:
        return f"{label} {value:.3g}{unit} is below the training range (>= {low:.3g}{unit})"
    return f"{label} {value:.3g}{unit} is outside the training range {low:.3g}-{high:.3g}{unit}"


def check_image(reference: OodReference, statistics: dict[str, float], descriptor: Optional[np.ndarray]) -> OodCheck:
    """The :class:`OodCheck` of one image: score, flag, reasons and the numbers behind them.

    Without a descriptor (feature capture unavailable) the score rests on the statistics
    alone (0 when all are inside their ranges), and the reasons say so.
    """
    threshold = float(reference.threshold)
    measurements = {k: float(v) for k, v in statistics.items() if v is not None and math.isfinite(v)}
    reasons: list[str] = []
    score = 0.0
    if descriptor is not None:
        distance = feature_distance(reference, descriptor)
        measurements["feature_distance"] = distance
        score = distance
        if distance >= threshold:
            reasons.append(f"backbone features far from training (distance {distance:.2f}, threshold {threshold:.2f})")
    else:
        reasons.append("no feature descriptor for this image: judged on input statistics only")
    excess = statistic_excess(reference, statistics)
    for name in sorted(excess, key=lambda n: -excess[n]):
        low, high = reference.ranges[name]
        reasons.append(_describe(name, statistics[name], low, high))
    if excess:
        score = max(score, threshold * (1.0 + max(excess.values())))
    flagged = score >= threshold
    if not flagged:
        reasons = [r for r in reasons if r.startswith("no feature descriptor")]
    return OodCheck(
        score=float(score), threshold=threshold, flagged=bool(flagged), reasons=reasons, measurements=measurements
    )


# ------------------------------------------------------------------------------------ fitting


def _ranges(train_statistics: list[dict[str, float]], tolerance: float) -> dict[str, tuple[float, float]]:
    ranges: dict[str, tuple[float, float]] = {}
    for name in STATISTICS:
        values = np.array([s[name] for s in train_statistics if name in s and math.isfinite(s[name])], dtype=float)
        if values.size == 0:
            continue
        low, high = float(values.min()), float(values.max())
        if name in LINEAR_STATISTICS:
            low = low - BITS_TOLERANCE
        else:
            low, high = low / (1.0 + tolerance), high * (1.0 + tolerance)
        ranges[name] = (low, math.inf if name in LOWER_LIMIT_ONLY else high)
    return ranges


def fit_reference(
    train_statistics: list[dict[str, float]],
    train_descriptors: np.ndarray,
    val_statistics: list[dict[str, float]],
    val_descriptors: np.ndarray,
    *,
    model_sha256: str,
    n_components: int = 16,
    tolerance: float = DEFAULT_TOLERANCE,
    threshold_quantile: float = 1.0,
    threshold_margin: float = 1.1,
) -> OodReference:
    """Fit a reference on training images and choose its threshold on validation images.

    The statistics' ranges and the feature distribution come from the training images only;
    the threshold is ``threshold_margin`` times the ``threshold_quantile`` quantile of the
    validation images' feature distances (default: 10% above the largest), i.e. chosen on
    images the model was not trained on, where the in-sample distances would be too small.
    """
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    train = np.asarray(train_descriptors, dtype=np.float64)
    val = np.asarray(val_descriptors, dtype=np.float64)
    if train.ndim != 2 or train.shape[0] < 3:
        raise ModelError(f"an OOD reference needs at least 3 training descriptors, got {train.shape[0]}")
    if val.ndim != 2 or val.shape[0] < 1 or val.shape[1] != train.shape[1]:
        raise ModelError("an OOD reference needs validation descriptors of the training descriptors' size")
    # At most half the training images: the other half of the variation is what the
    # residual scale r0 is measured from (with k = n - 1 the training residuals are 0).
    k = int(max(1, min(n_components, (train.shape[0] - 1) // 2, train.shape[1] - 1)))
    pca = PCA(n_components=k, svd_solver="full").fit(train)
    mean, components = pca.mean_, pca.components_
    z = (train - mean) @ components.T
    precision = LedoitWolf().fit(z).get_precision()
    residual = (train - mean) - z @ components
    residual_rms = float(np.sqrt(np.mean(np.sum(residual**2, axis=1))))
    if not residual_rms > 1e-9 * float(np.sqrt(np.mean(np.sum((train - mean) ** 2, axis=1)))):
        raise ModelError("OOD reference: the training descriptors leave no residual; use more (varied) training images")
    partial = OodReference(model_sha256, mean, components, precision, residual_rms, {}, threshold=math.inf)
    val_d = np.array([feature_distance(partial, v) for v in val])
    train_d = np.array([feature_distance(partial, v) for v in train])
    ranges = _ranges(train_statistics, tolerance)
    probe = OodReference("", np.zeros(1), np.zeros((1, 1)), np.zeros((1, 1)), 1.0, ranges, math.inf)
    threshold = float(np.quantile(val_d, threshold_quantile) * threshold_margin)
    return OodReference(
        model_sha256=model_sha256,
        mean=mean,
        components=components,
        precision=precision,
        residual_rms=residual_rms,
        ranges=ranges,
        threshold=threshold,
        info={
            "n_train": int(train.shape[0]),
            "n_val": int(val.shape[0]),
            "n_components": k,
            "tolerance": tolerance,
            "threshold_rule": f"{threshold_margin:g} x the {threshold_quantile:g} quantile of the validation feature distances",
            "train_distance_max": float(train_d.max()),
            "val_distance_median": float(np.median(val_d)),
            "val_distance_max": float(val_d.max()),
            "val_statistics_outside_range": int(sum(bool(statistic_excess(probe, s)) for s in val_statistics)),
        },
    )


# ------------------------------------------------------------------------------ the side file


def save_reference(reference: OodReference, path: os.PathLike | str) -> str:
    """Write ``reference`` as an ``.npz`` side file, atomically; return its sha256."""
    import hashlib

    meta = {
        "format": FORMAT,
        "model_sha256": reference.model_sha256,
        "residual_rms": reference.residual_rms,
        "ranges": {k: [lo, hi if math.isfinite(hi) else None] for k, (lo, hi) in reference.ranges.items()},
        "threshold": reference.threshold,
        "info": reference.info,
    }
    buffer = io.BytesIO()
    np.savez(
        buffer,
        mean=reference.mean.astype(np.float64),
        components=reference.components.astype(np.float64),
        precision=reference.precision.astype(np.float64),
        meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8),
    )
    data = buffer.getvalue()
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def read_reference(path: os.PathLike | str) -> OodReference:
    """Read a side file written by :func:`save_reference` (no checksum: see :func:`load_reference`)."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode("utf-8"))
            arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ("mean", "components", "precision")}
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"OOD reference {path} is not a readable reference file: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise ModelError(f"OOD reference {path}: unknown format {meta.get('format')!r}, expected {FORMAT!r}")
    ranges = {k: (float(lo), math.inf if hi is None else float(hi)) for k, (lo, hi) in meta["ranges"].items()}
    return OodReference(
        model_sha256=str(meta["model_sha256"]),
        mean=arrays["mean"],
        components=arrays["components"],
        precision=arrays["precision"],
        residual_rms=float(meta["residual_rms"]),
        ranges=ranges,
        threshold=float(meta["threshold"]),
        info=dict(meta.get("info", {})),
    )


def reference_path(spec: ModelSpec) -> Optional[Path]:
    """Where ``spec``'s reference file is (relative paths against the manifest's folder)."""
    if not spec.ood:
        return None
    path = Path(str(spec.ood["file"]))
    if not path.is_absolute() and spec.folder:
        path = Path(spec.folder) / path
    return path


def load_reference(spec: ModelSpec) -> Optional[OodReference]:
    """The verified reference of a model, or None when its manifest entry names none.

    Like the weights: checksum first (a mismatch is a :class:`ChecksumError`), and the file
    must belong to these weights (its recorded model sha256), or it is a :class:`ModelError`.
    """
    path = reference_path(spec)
    if path is None:
        return None
    if not path.is_file():
        raise ModelError(f"OOD reference of model {spec.name!r} not found: {path}")
    actual = sha256_file(path)
    expected = str(spec.ood.get("sha256", "")) if spec.ood else ""
    if actual.lower() != expected.lower():
        raise ChecksumError(
            f"OOD reference {path} does not match model {spec.name!r}: sha256 {actual}, manifest says {expected}"
        )
    reference = read_reference(path)
    if reference.model_sha256.lower() != spec.sha256.lower():
        raise ModelError(
            f"OOD reference {path} was fitted for weights {reference.model_sha256[:12]}..., "
            f"not for model {spec.name!r} ({spec.sha256[:12]}...)"
        )
    return reference
