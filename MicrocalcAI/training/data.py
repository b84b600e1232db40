"""Training and evaluation data: COCO-annotated mammograms in the model's canonical frame.

A dataset is a COCO JSON file read by :func:`MicrocalcAI.datasets.coco.parse_coco` (format and
validation rules there): boxes in *stored* pixels of the referenced image files (DICOM or any
format :func:`MicrocalcAI.core.read.read_mammogram` reads), categories ``benign`` and
``malignant``, image entries optionally carrying ``spacing_mm`` (used when the file itself has
no spacing, as a user would pass ``--spacing`` at inference).

Every image goes through exactly the same :func:`read_mammogram` + :func:`standardise` path as
inference, so the detector is trained in the frame it later sees. Standardising a full-field
mammogram takes seconds, so the canonical image, breast mask and transform are cached as
``.npz`` files keyed by file path, modification time, size, spacing and a hash of the reader
and standardiser source; the boxes are mapped
from the COCO file on every load, so editing annotations never needs a cache purge.

:class:`PatchSampler` turns the canonical images into fixed-size training patches: class
balanced, lesion-centred with random jitter, plus background patches inside the breast, with
augmentations that transform the boxes together with the pixels.

This module does not import torch: it only produces numpy arrays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from MicrocalcAI.core.atomic import atomic_open
from MicrocalcAI.core.equalise import NoiseEqualisation
from MicrocalcAI.core.errors import DatasetError, MicrocalcAIError
from MicrocalcAI.core.progress import ProgressCallback, no_progress
from MicrocalcAI.core.records import CanonicalImage, CanonicalTransform
from MicrocalcAI.core.standardise import rescale_square
from MicrocalcAI.datasets.coco import CocoImage, parse_coco

log = logging.getLogger(__name__)


#: Bump when the cached content or its meaning changes, so stale caches are ignored.
CACHE_VERSION = 1


# ------------------------------------------------------------------- canonical samples + cache


@dataclass
class CanonicalSample:
    """One image in the canonical frame with its lesion boxes: the unit training works on.

    ``image`` is kept as float16 to halve the memory of a few hundred full-field images; the
    quantisation (~5e-4 relative) is far below the intensity augmentation applied in training.
    """

    image_id: int
    path: Path
    image: np.ndarray  # float16 (rows, cols) in [0, 1]
    mask: np.ndarray  # bool (rows, cols)
    transform: CanonicalTransform
    spacing_mm: float
    boxes: np.ndarray  # (N, 4) float32 canonical [u0, v0, u1, v1]
    labels: np.ndarray  # (N,) int64 1 = benign, 2 = malignant
    extra: dict[str, Any] = field(default_factory=dict)
    #: (M, 4) float32 canonical boxes of recorded hard negatives (never lesions).
    hard_negatives: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.float32))

    def to_canonical_image(self) -> CanonicalImage:
        """The :class:`CanonicalImage` that ``detect`` takes, rebuilt from the cached arrays."""
        return CanonicalImage(
            image=self.image.astype(np.float32),
            mask=self.mask,
            spacing_mm=self.spacing_mm,
            transform=self.transform,
        )


def pipeline_fingerprint() -> str:
    """Hash of the reader and standardiser source: a changed pipeline must not reuse old caches.

    A cached canonical image is only valid for the code that made it; keying on the source
    files means an upgraded standardiser re-standardises instead of silently training the
    model on a frame that inference no longer produces.
    """
    from MicrocalcAI.core import equalise, noise, resample, spacing, standardise
    from MicrocalcAI.core import read as reader

    digest = hashlib.sha1()
    for module in (reader, standardise, resample, equalise, noise, spacing):  # spacing: the unknown-spacing rule
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()[:16]


def _cache_key(
    path: Path,
    spacing_mm: float,
    assumed_input_spacing_mm: float,
    coco_spacing: Optional[float],
    fingerprint: str,
    noise_equalisation: Optional[NoiseEqualisation] = None,
) -> str:
    stat = path.stat()
    ident = json.dumps(
        [
            CACHE_VERSION,
            fingerprint,
            str(path.resolve()),
            stat.st_mtime_ns,
            stat.st_size,
            spacing_mm,
            assumed_input_spacing_mm,
            coco_spacing,
            *([] if noise_equalisation is None else [noise_equalisation.to_json()]),
        ]
    )
    return hashlib.sha1(ident.encode("utf-8")).hexdigest()


def _save_npz_atomic(path: Path, **arrays: Any) -> None:
    with atomic_open(path) as fh:
        np.savez(fh, **arrays)


def _transform_to_array(t: CanonicalTransform) -> np.ndarray:
    return np.array([*t.stored_shape, float(t.flipped), *t.scale, *t.offset, *t.canonical_shape], dtype=np.float64)


def _transform_from_array(a: np.ndarray) -> CanonicalTransform:
    return CanonicalTransform(
        stored_shape=(int(a[0]), int(a[1])),
        flipped=bool(a[2]),
        scale=(float(a[3]), float(a[4])),
        offset=(float(a[5]), float(a[6])),
        canonical_shape=(int(a[7]), int(a[8])),
    )


def standardise_file(
    path: os.PathLike | str,
    *,
    spacing_mm: float,
    assumed_input_spacing_mm: float,
    input_spacing_mm: Optional[float] = None,
    noise_equalisation: Optional[NoiseEqualisation] = None,
) -> CanonicalImage:
    """Read and standardise one file exactly as inference does (``noise_equalisation``: the
    model's setting, :attr:`~MicrocalcAI.core.detect.manifest.ModelSpec.noise_equalisation`).

    ``input_spacing_mm`` plays the role of the user's ``--spacing``: it is used only when the
    file carries no spacing of its own, so a dataset's annotation never overrides the header.
    """
    from MicrocalcAI.core.read import read_mammogram
    from MicrocalcAI.core.standardise import standardise

    mammogram = read_mammogram(path)
    if mammogram.spacing_mm is None and input_spacing_mm is not None:
        mammogram.spacing_mm = (float(input_spacing_mm), float(input_spacing_mm))
        mammogram.spacing_source = "user"
    return standardise(
        mammogram,
        spacing_mm=spacing_mm,
        assumed_input_spacing_mm=assumed_input_spacing_mm,
        noise_equalisation=noise_equalisation,
    )


class CocoMammogramDataset:
    """A validated COCO dataset whose images are standardised once and kept in memory.

    Indexing returns :class:`CanonicalSample` objects. Images are standardised lazily (or all
    at once with :meth:`prepare`) and cached on disk when ``cache_dir`` is given.
    """

    def __init__(
        self,
        coco_json: os.PathLike | str,
        *,
        spacing_mm: float,
        assumed_input_spacing_mm: float,
        cache_dir: Optional[os.PathLike | str] = None,
        skip_unusable: bool = False,
        noise_equalisation: Optional[NoiseEqualisation] = None,
    ) -> None:
        if spacing_mm <= 0 or assumed_input_spacing_mm <= 0:
            raise DatasetError(f"spacings must be positive, got {spacing_mm} and {assumed_input_spacing_mm}")
        self.coco_json = Path(coco_json)
        self.spacing_mm = float(spacing_mm)
        self.assumed_input_spacing_mm = float(assumed_input_spacing_mm)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.entries = parse_coco(self.coco_json)
        #: When True, :meth:`prepare` drops images that read/standardise refuse (listed in
        #: ``skipped``) instead of failing: inference would refuse them too, so they cannot
        #: teach the model anything, but a large dataset should not die on one odd file.
        self.skip_unusable = bool(skip_unusable)
        self.noise_equalisation = noise_equalisation
        self.skipped: list[tuple[Path, str]] = []
        self._samples: dict[int, CanonicalSample] = {}
        self._fingerprint: Optional[str] = None

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> CanonicalSample:
        if index < 0:
            index += len(self.entries)
        if index not in self._samples:
            self._samples[index] = self._load(self.entries[index])
        return self._samples[index]

    @property
    def num_lesions(self) -> int:
        return int(sum(len(e.labels) for e in self.entries))

    def prepare(self, progress: ProgressCallback = no_progress) -> None:
        """Standardise (or load from cache) every image now, so training never stalls on I/O."""
        n = len(self.entries)
        kept: list[CocoImage] = []
        samples: dict[int, CanonicalSample] = {}
        for i, entry in enumerate(self.entries):
            progress(i / n, f"standardising {entry.path.name} ({i + 1}/{n})")
            try:
                sample = self._samples.get(i) or self._load(entry)
            except DatasetError as exc:
                if not self.skip_unusable:
                    raise
                log.warning("skipping unusable image: %s", exc)
                self.skipped.append((entry.path, str(exc)))
                continue
            samples[len(kept)] = sample
            kept.append(entry)
        self.entries, self._samples = kept, samples
        if not self.entries:
            raise DatasetError(f"COCO file {self.coco_json}: no usable image (all {n} were refused)")
        if self.skipped:
            log.warning("%s: %d of %d images skipped as unusable", self.coco_json, len(self.skipped), n)
        progress(1.0, f"{len(self.entries)} images ready")

    def _load(self, entry: CocoImage) -> CanonicalSample:
        canonical = self._canonical(entry)
        boxes = canonical_boxes(entry.boxes_stored, canonical.transform, canonical.image.shape)
        keep = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
        if not np.all(keep):
            log.warning(
                "%s: %d lesion box(es) fall outside the standardised breast crop and are ignored",
                entry.path,
                int((~keep).sum()),
            )
        hard = canonical_boxes(entry.hard_negatives_stored, canonical.transform, canonical.image.shape)
        hard = hard[(hard[:, 2] - hard[:, 0] > 0) & (hard[:, 3] - hard[:, 1] > 0)]
        return CanonicalSample(
            image_id=entry.image_id,
            path=entry.path,
            image=canonical.image.astype(np.float16),
            mask=canonical.mask.astype(bool),
            transform=canonical.transform,
            spacing_mm=canonical.spacing_mm,
            boxes=boxes[keep].astype(np.float32),
            labels=entry.labels[keep],
            extra=dict(entry.extra),
            hard_negatives=hard.astype(np.float32),
        )

    def _canonical(self, entry: CocoImage) -> CanonicalImage:
        cache_file = None
        if self.cache_dir is not None:
            if self._fingerprint is None:
                self._fingerprint = pipeline_fingerprint()
            key = _cache_key(
                entry.path,
                self.spacing_mm,
                self.assumed_input_spacing_mm,
                entry.spacing_mm,
                self._fingerprint,
                self.noise_equalisation,
            )
            cache_file = self.cache_dir / f"{key}.npz"
            if cache_file.is_file():
                try:
                    with np.load(cache_file) as z:
                        return CanonicalImage(
                            image=z["image"].astype(np.float32),
                            mask=z["mask"].astype(bool),
                            spacing_mm=float(z["spacing_mm"]),
                            transform=_transform_from_array(z["transform"]),
                        )
                except (OSError, KeyError, ValueError) as exc:
                    log.warning("ignoring unreadable cache file %s: %s", cache_file, exc)
        try:
            canonical = standardise_file(
                entry.path,
                spacing_mm=self.spacing_mm,
                assumed_input_spacing_mm=self.assumed_input_spacing_mm,
                input_spacing_mm=entry.spacing_mm,
                noise_equalisation=self.noise_equalisation,
            )
        except MicrocalcAIError as exc:
            raise DatasetError(
                f"COCO file {self.coco_json}: image {entry.image_id} ({entry.path}) cannot be used: {exc}"
            ) from exc
        if cache_file is not None:
            _save_npz_atomic(
                cache_file,
                image=canonical.image.astype(np.float16),
                mask=canonical.mask.astype(bool),
                spacing_mm=np.asarray(canonical.spacing_mm, dtype=np.float64),
                transform=_transform_to_array(canonical.transform),
            )
        return canonical


def canonical_boxes(boxes_stored: np.ndarray, transform: CanonicalTransform, shape: Sequence[int]) -> np.ndarray:
    """Map stored boxes into the canonical frame and clip them to the canonical image."""
    boxes = transform.to_canonical_boxes(boxes_stored).reshape(-1, 4)
    rows, cols = int(shape[0]), int(shape[1])
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, cols)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, rows)
    return boxes


# ----------------------------------------------------------------------------- patch sampling


@dataclass
class PatchConfig:
    """How training patches are drawn and augmented."""

    patch_size: int = 320
    #: Fraction of patches placed at a random point of the breast rather than on a lesion.
    background_fraction: float = 0.3
    #: Among lesion patches, the fraction centred on a malignant lesion (class balance).
    malignant_fraction: float = 0.5
    #: Among background patches, the fraction placed on a recorded hard negative (isolated
    #: speck, skin marker, vessel crossing, scratch...) when the data has any: random breast
    #: patches rarely contain one, and these look-alikes are where false positives come from.
    hard_negative_fraction: float = 0.0
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    #: Scale jitter (issue 10): each patch is a window of ``patch_size / s`` canonical pixels
    #: resampled to ``patch_size``, ``s`` log-uniform in this range, the way standardisation
    #: resamples (Lanczos enlarging, anti-aliased linear shrinking), so the detector also sees
    #: calcifications as an input whose stated spacing is off by that factor would show them.
    #: (1, 1) = off, and then no random number is drawn for it (older configs draw as before).
    scale_range: tuple[float, float] = (1.0, 1.0)
    #: Intensity jitter: ``image ** gamma`` then contrast about the patch mean. (1, 1) = off.
    gamma_range: tuple[float, float] = (0.8, 1.25)
    contrast_range: tuple[float, float] = (0.9, 1.1)
    #: Boxes cut by the patch border are dropped when a side is shorter than this (pixels)...
    min_box_side: float = 3.0
    #: ... or when less than this fraction of their area lies inside the patch.
    min_visible_fraction: float = 0.35

    def __post_init__(self) -> None:
        if self.patch_size < 32:
            raise DatasetError(f"patch_size must be at least 32, got {self.patch_size}")
        for name in ("background_fraction", "malignant_fraction", "hard_negative_fraction", "min_visible_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise DatasetError(f"{name} must be in [0, 1], got {value}")
        self.scale_range = tuple(float(v) for v in self.scale_range)  # type: ignore[assignment]
        if len(self.scale_range) != 2 or not 0.25 <= self.scale_range[0] <= self.scale_range[1] <= 4.0:
            raise DatasetError(f"scale_range must be (low, high) with 0.25 <= low <= high <= 4, got {self.scale_range}")
        self.gamma_range = tuple(float(v) for v in self.gamma_range)  # type: ignore[assignment]
        self.contrast_range = tuple(float(v) for v in self.contrast_range)  # type: ignore[assignment]


@dataclass
class Patch:
    """A training patch: float32 image in [0, 1] and its boxes in patch pixels."""

    image: np.ndarray  # float32 (P, P)
    boxes: np.ndarray  # (N, 4) float32 [x0, y0, x1, y1]
    labels: np.ndarray  # (N,) int64
    source: tuple[int, int, int]  # (sample index, row, col): origin of the window read (patch_size / scale)


def flip_boxes_horizontal(boxes: np.ndarray, width: float) -> np.ndarray:
    """Boxes after mirroring an image of ``width`` columns left-right (x -> width - x)."""
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def flip_boxes_vertical(boxes: np.ndarray, height: float) -> np.ndarray:
    """Boxes after mirroring an image of ``height`` rows top-bottom (y -> height - y)."""
    out = boxes.copy()
    out[:, 1] = height - boxes[:, 3]
    out[:, 3] = height - boxes[:, 1]
    return out


def rot90_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Boxes after ``np.rot90(image)`` (one counter-clockwise quarter turn): (x, y) -> (y, width - x)."""
    out = np.empty_like(boxes)
    out[:, 0] = boxes[:, 1]
    out[:, 2] = boxes[:, 3]
    out[:, 1] = width - boxes[:, 2]
    out[:, 3] = width - boxes[:, 0]
    return out


def clip_boxes_to_patch(
    boxes: np.ndarray, labels: np.ndarray, size: int, min_side: float, min_visible_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to ``[0, size]`` and drop the remnants too small to teach the detector anything."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4).astype(np.float32), labels.astype(np.int64)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    clipped = np.clip(boxes, 0, size)
    w = clipped[:, 2] - clipped[:, 0]
    h = clipped[:, 3] - clipped[:, 1]
    visible = np.where(area > 0, (w * h) / np.maximum(area, 1e-9), 0.0)
    keep = (w > 0) & (h > 0) & (w >= min_side) & (h >= min_side) & (visible >= min_visible_fraction)
    return clipped[keep].astype(np.float32), labels[keep].astype(np.int64)


class PatchSampler:
    """Draws augmented, fixed-size training patches from canonical samples.

    Lesion patches are class balanced (``malignant_fraction``) and place the lesion at a
    random position such that the whole lesion lies inside the patch whenever it fits, so
    the detector never learns "lesions are in the centre". Background patches are centred on
    a random breast pixel, or (``hard_negative_fraction``) hold a recorded hard negative at a
    random position. All randomness comes from one seeded numpy generator whose state
    is exposed for checkpointing, so a resumed run draws the same patches.
    """

    def __init__(self, samples: Sequence[CanonicalSample], config: PatchConfig, seed: int = 0) -> None:
        if len(samples) == 0:
            raise DatasetError("cannot sample patches from an empty dataset")
        self.samples = samples
        self.config = config
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._lesions: dict[int, list[tuple[int, int]]] = {1: [], 2: []}
        for si, s in enumerate(samples):
            for li, label in enumerate(s.labels):
                self._lesions.setdefault(int(label), []).append((si, li))
        self._hard_negatives = [(si, hi) for si, s in enumerate(samples) for hi in range(len(s.hard_negatives))]
        self._breast_points: dict[int, np.ndarray] = {}
        if not any(self._lesions.values()):
            log.warning("dataset has no lesions: every patch will be background")

    # -- RNG state for checkpoints (JSON so it survives torch.load(weights_only=True))
    def get_state(self) -> str:
        return json.dumps(self.rng.bit_generator.state)

    def set_state(self, state: str) -> None:
        self.rng.bit_generator.state = json.loads(state)

    def sample_batch(self, n: int) -> list[Patch]:
        return [self.sample() for _ in range(n)]

    def sample(self) -> Patch:
        cfg = self.config
        has_lesions = any(self._lesions.values())
        # The window read from the canonical image: patch_size / scale pixels, placed like a
        # patch of that size (a lesion that fits lies wholly inside), resampled to patch_size.
        window = max(8, int(round(cfg.patch_size / self._scale())))
        if has_lesions and self.rng.random() >= cfg.background_fraction:
            si, r0, c0 = self._lesion_origin(window)
        else:
            si, r0, c0 = self._background_origin(window)
        sample = self.samples[si]
        image = crop_padded(sample.image, r0, c0, window)
        boxes = sample.boxes.astype(np.float64) - np.array([c0, r0, c0, r0], dtype=np.float64)
        if window != cfg.patch_size:
            image = rescale_square(image, cfg.patch_size)
            boxes = boxes * (cfg.patch_size / window)
        labels = sample.labels.copy()
        # Boxes are clipped before the geometric augmentation: flips and quarter turns of a
        # square patch map [0, P] onto itself, so clipping commutes with them.
        boxes, labels = clip_boxes_to_patch(boxes, labels, cfg.patch_size, cfg.min_box_side, cfg.min_visible_fraction)
        image, boxes = self._augment(image, boxes.astype(np.float64))
        return Patch(image=image, boxes=boxes.astype(np.float32), labels=labels, source=(si, r0, c0))

    def _scale(self) -> float:
        lo, hi = self.config.scale_range
        if lo == hi:
            return lo
        return float(np.exp(self.rng.uniform(np.log(lo), np.log(hi))))

    def _lesion_origin(self, size: int) -> tuple[int, int, int]:
        cfg = self.config
        benign, malignant = self._lesions.get(1, []), self._lesions.get(2, [])
        if benign and malignant:
            pool = malignant if self.rng.random() < cfg.malignant_fraction else benign
        else:
            pool = malignant or benign
        si, li = pool[int(self.rng.integers(len(pool)))]
        sample = self.samples[si]
        x0, y0, x1, y1 = (float(v) for v in sample.boxes[li])
        rows, cols = sample.image.shape
        c0 = self._jittered_origin(x0, x1, cols, size)
        r0 = self._jittered_origin(y0, y1, rows, size)
        return si, r0, c0

    def _jittered_origin(self, lo: float, hi: float, extent: int, size: int) -> int:
        """Origin of a ``size`` window along one axis: lesion fully inside when it fits, else
        window inside lesion."""
        a, b = math.ceil(hi) - size, math.floor(lo)
        if a > b:  # lesion longer than the window: keep the window within the lesion
            a, b = b, a
        origin = int(self.rng.integers(a, b + 1))
        # Stay inside the image when the image is large enough (padding only for tiny images).
        return int(min(max(origin, 0), max(extent - size, 0)))

    def _background_origin(self, size: int) -> tuple[int, int, int]:
        if (
            self._hard_negatives
            and self.config.hard_negative_fraction > 0
            and self.rng.random() < self.config.hard_negative_fraction
        ):
            si, hi = self._hard_negatives[int(self.rng.integers(len(self._hard_negatives)))]
            sample = self.samples[si]
            x0, y0, x1, y1 = (float(v) for v in sample.hard_negatives[hi])
            rows, cols = sample.image.shape
            return si, self._jittered_origin(y0, y1, rows, size), self._jittered_origin(x0, x1, cols, size)
        si = int(self.rng.integers(len(self.samples)))
        points = self._breast_points_of(si)
        rows, cols = self.samples[si].image.shape
        if len(points):
            r, c = points[int(self.rng.integers(len(points)))]
        else:
            r, c = int(self.rng.integers(rows)), int(self.rng.integers(cols))
        r0 = int(min(max(r - size // 2, 0), max(rows - size, 0)))
        c0 = int(min(max(c - size // 2, 0), max(cols - size, 0)))
        return si, r0, c0

    def _breast_points_of(self, si: int) -> np.ndarray:
        # A coarse grid of breast pixels is enough to place background patches and keeps
        # memory small (a full index list of a 2000x1500 mask would be ~50 MB).
        if si not in self._breast_points:
            mask = self.samples[si].mask
            step = 8
            rr, cc = np.nonzero(mask[::step, ::step])
            self._breast_points[si] = np.stack([rr * step, cc * step], axis=1).astype(np.int32)
        return self._breast_points[si]

    def _augment(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        size = float(cfg.patch_size)
        if cfg.hflip and self.rng.random() < 0.5:
            image = image[:, ::-1]
            boxes = flip_boxes_horizontal(boxes, size)
        if cfg.vflip and self.rng.random() < 0.5:
            image = image[::-1, :]
            boxes = flip_boxes_vertical(boxes, size)
        if cfg.rot90:
            for _ in range(int(self.rng.integers(4))):
                image = np.rot90(image)
                boxes = rot90_boxes(boxes, size)
        image = np.ascontiguousarray(image, dtype=np.float32)
        g_lo, g_hi = cfg.gamma_range
        c_lo, c_hi = cfg.contrast_range
        if (g_lo, g_hi) != (1.0, 1.0):
            # Log-uniform so that gamma and 1/gamma are equally likely.
            gamma = float(np.exp(self.rng.uniform(np.log(g_lo), np.log(g_hi))))
            image = np.power(np.clip(image, 0.0, 1.0), gamma, dtype=np.float32)
        if (c_lo, c_hi) != (1.0, 1.0):
            contrast = float(self.rng.uniform(c_lo, c_hi))
            mean = float(image.mean())
            image = np.clip((image - mean) * contrast + mean, 0.0, 1.0).astype(np.float32)
        return image, boxes


def crop_padded(image: np.ndarray, r0: int, c0: int, size: int) -> np.ndarray:
    """A ``size`` x ``size`` float32 crop at (r0, c0), zero-padded (canonical background) past the edges."""
    out = np.zeros((size, size), dtype=np.float32)
    rows, cols = image.shape
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + size, rows), min(c0 + size, cols)
    if re > rs and ce > cs:
        out[rs - r0 : re - r0, cs - c0 : ce - c0] = image[rs:re, cs:ce]
    return out
