"""Noise equalisation: the detector's input with the same pixel noise on every image.

A calcification is visible by its contrast against the noise around it, and that noise varies
by a factor of ten between a clean digital detector, a grainy film and a coarse digitiser, and
with grey level inside one image (film grain and quantum noise both depend on exposure). A
detector fed raw grey values must learn every noise level it will meet; fed equalised input, a
speck of given contrast-to-noise ratio looks the same whatever produced the image. Veldkamp &
Karssemeijer (IEEE TMI 19(7), 2000) normalised local contrast by the noise estimated as a
function of grey level for exactly this; Bria et al. (IEEE TMI 37(4), 2018, "adaptive variance
stabilisation") report gains for every calcification detector and every vendor they tried.

What this module does, and why this way:

- The noise is measured at the input's **native pixel scale** (the normalised stored image,
  before resampling), where film grain and detector noise are pixel-scale and the 4-neighbour
  residual of :mod:`MicrocalcAI.core.noise` separates them from tissue; the rule the
  out-of-distribution statistics use, on up to 96 windows (the OOD check takes 48). Per window: its median grey and its noise; the
  windows are grouped by grey level and the median noise of each group gives a noise-versus-
  grey curve (linear between group medians, constant beyond).
- The image keeps its tissue: only the detail around a local background is rescaled,
  ``out = B + (x - B) * gain(B)`` with ``B`` the breast-only Gaussian background (sigma
  ``background_sigma_mm``, larger than any single calcification, 0.1-1 mm, so a speck is detail
  and tissue is background) and ``gain = target_noise / noise(B)``. The network keeps the
  tissue context it was trained with; a speck's height above its background becomes its
  contrast-to-noise ratio *at the native pixel scale* times ``target_noise``. This is applied
  on the canonical grid, after resampling: both steps are linear in the detail and the gain
  varies smoothly, so the order changes nothing but the cost (the canonical image is 4x
  smaller than a 0.05 mm film).
- What is equalised is the noise of the **native** pixels. Resampling to the canonical grid
  then changes the per-pixel noise by a factor that depends on the input spacing (averaging
  0.05 mm pixels in pairs lowers it; upsampling a 0.2 mm image spreads it over neighbouring
  pixels), the same way in training and at inference: on a synthetic breast with white noise
  the canonical noise after equalisation to 0.004 measures 0.0015 from 0.05 mm, 0.0040 from
  0.1 mm and 0.0013 from 0.2 mm inputs (4-neighbour residual, which also under-reads
  correlated noise). A variant measured on the canonical grid was not tried.
- The gain is clipped to [``min_gain``, ``max_gain``]: a perfectly smooth synthetic image has
  almost no noise, and an unbounded gain would turn its rounding steps into texture.

This module is imported by the manifest, which must import with the standard library alone
(Slicer start-up, the wheel check), so numpy, scipy and :mod:`MicrocalcAI.core.noise` are
imported inside the functions that compute.

It is a model setting, not a user option: a model trained with it needs it at inference and
one trained without it must not get it. The manifest entry records it
(:attr:`MicrocalcAI.core.detect.manifest.ModelSpec.noise_equalisation`) and
:func:`MicrocalcAI.core.standardise.standardise` applies it; training standardises through the
same function.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional

from MicrocalcAI.core.errors import InputError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["NoiseCurve", "NoiseEqualisation", "equalise_noise", "noise_curve"]

log = logging.getLogger(__name__)

#: Lowest noise level a curve may hold (normalised grey units, 1/16 of an 8-bit step over the
#: breast's range): below it an image is as good as noise-free and the gain is at its maximum.
NOISE_FLOOR = 2.5e-4
#: Settings that are counts (the others are real numbers).
_COUNTS = ("grey_groups", "max_windows")


@dataclass(frozen=True)
class NoiseEqualisation:
    """Settings of noise equalisation, recorded in a model's manifest entry.

    ``target_noise`` is the noise standard deviation of the output (normalised grey units): the
    typical pixel noise of the simulated training images (0.0014-0.013, median about 0.004, the
    range in the 0.3.0 OOD reference), so that the typical training image passes nearly
    unchanged and fine-tuning from an unequalised model starts close to its optimum.
    """

    target_noise: float = 0.004
    background_sigma_mm: float = 0.5
    min_gain: float = 0.25
    max_gain: float = 4.0
    #: Windows are grouped by grey level into this many groups for the noise-versus-grey curve.
    grey_groups: int = 4
    #: At most this many noise windows per image (evenly spread over the breast).
    max_windows: int = 96

    def __post_init__(self) -> None:
        positive = ("target_noise", "background_sigma_mm", "min_gain", "max_gain")
        if not all(isinstance(getattr(self, k), (int, float)) and getattr(self, k) > 0 for k in positive):
            raise InputError(f"noise equalisation: {', '.join(positive)} must be positive numbers, got {self}")
        if self.min_gain > self.max_gain:
            raise InputError(f"noise equalisation: min_gain {self.min_gain} exceeds max_gain {self.max_gain}")
        if int(self.grey_groups) < 1 or int(self.max_windows) < int(self.grey_groups):
            raise InputError(f"noise equalisation: need 1 <= grey_groups <= max_windows, got {self}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_setting(cls, value: Any) -> Optional[NoiseEqualisation]:
        """The setting as training configs, checkpoints and manifests write it: absent, null or
        ``false`` = off (None); ``true`` = the defaults; an object = those settings."""
        if value is None or value is False:
            return None
        return value if isinstance(value, cls) else cls.from_json(value)

    @classmethod
    def from_json(cls, data: Any) -> NoiseEqualisation:
        """From a manifest entry or training config (``true`` = the defaults; for off see
        :meth:`from_setting`); unknown keys and non-numbers are errors, not ignored."""
        if data is True:
            return cls()
        if not isinstance(data, dict):
            raise InputError(f"noise_equalisation must be an object (or true for the defaults), got {data!r}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"noise_equalisation: unknown settings {sorted(unknown)}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"noise_equalisation: {key} must be a finite number, got {value!r}")
            if key in _COUNTS and value != int(value):
                raise InputError(f"noise_equalisation: {key} must be a whole number, got {value!r}")
            values[key] = int(value) if key in _COUNTS else float(value)
        return cls(**values)


@dataclass(frozen=True)
class NoiseCurve:
    """Noise standard deviation against grey level of one image (normalised grey units)."""

    grey: np.ndarray  # increasing knots
    noise: np.ndarray  # noise at each knot, >= NOISE_FLOOR

    def __call__(self, grey: np.ndarray) -> np.ndarray:
        import numpy as np

        return np.interp(grey, self.grey, self.noise).astype(np.float32)


def noise_curve(stored01: np.ndarray, mask: np.ndarray, config: NoiseEqualisation) -> Optional[NoiseCurve]:
    """The noise-versus-grey curve of a normalised stored image (native pixels), or None when
    the breast holds no whole measuring window (then nothing can be equalised)."""
    import numpy as np

    from MicrocalcAI.core.noise import WINDOW, breast_windows, window_noise

    corners = breast_windows(np.asarray(mask, dtype=bool), WINDOW, int(config.max_windows))
    if not corners:
        return None
    grey, noise = [], []
    for r, c in corners:
        w = np.asarray(stored01[r : r + WINDOW, c : c + WINDOW], dtype=np.float64)
        grey.append(float(np.median(w)))
        noise.append(window_noise(w))
    order = np.argsort(grey, kind="stable")
    groups = np.array_split(order, min(int(config.grey_groups), len(order)))
    knots_g = np.array([np.median(np.asarray(grey)[g]) for g in groups])
    knots_n = np.array([np.median(np.asarray(noise)[g]) for g in groups])
    # Equal grey medians (a flat image) would make np.interp's knots non-increasing.
    knots_g, first = np.unique(knots_g, return_index=True)
    knots_n = np.maximum(knots_n[first], NOISE_FLOOR)
    return NoiseCurve(grey=knots_g, noise=knots_n)


def equalise_noise(
    image: np.ndarray, mask: np.ndarray, spacing_mm: float, curve: Optional[NoiseCurve], config: NoiseEqualisation
) -> np.ndarray:
    """Equalise ``image`` (canonical, float32, [0, 1], 0 off ``mask``) in place and return it.

    ``curve`` is the image's own :func:`noise_curve` from its native pixels; None leaves the
    image as it is (logged). The result is clipped to [0, 1] and 0 off the mask.
    """
    import numpy as np
    from scipy import ndimage

    if curve is None:
        log.debug("noise equalisation skipped: the breast holds no window to measure noise in")
        return image
    if image.dtype != np.float32:
        raise InputError(f"noise equalisation works on float32 images, got {image.dtype}")
    if not (spacing_mm > 0 and math.isfinite(spacing_mm)):
        raise InputError(f"noise equalisation needs a positive spacing, got {spacing_mm!r}")
    mask = np.asarray(mask, dtype=bool)
    sigma = float(config.background_sigma_mm) / float(spacing_mm)
    weight = mask.astype(np.float32)
    # Breast-only background (normalised convolution): air at 0 must not pull the background
    # down at the skin line, where the detail would otherwise become a bright rim.
    background = ndimage.gaussian_filter(image * weight, sigma, mode="constant", truncate=3.0)
    support = ndimage.gaussian_filter(weight, sigma, mode="constant", truncate=3.0)
    np.divide(background, np.maximum(support, np.float32(1e-6)), out=background)
    gain = np.float32(config.target_noise) / curve(background)
    np.clip(gain, np.float32(config.min_gain), np.float32(config.max_gain), out=gain)
    np.subtract(image, background, out=image)
    np.multiply(image, gain, out=image)
    np.add(image, background, out=image)
    np.clip(image, 0.0, 1.0, out=image)
    image[~mask] = 0.0
    return image
