"""Canonical training images, caching and box-correct patch sampling (MicrocalcAI.training.data)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from _train_helpers import box_pixels_are_lesion, simulate_tiny, synthetic_sample

from MicrocalcAI.core.equalise import NoiseEqualisation
from MicrocalcAI.core.errors import DatasetError
from MicrocalcAI.training.data import (
    CocoMammogramDataset,
    PatchConfig,
    PatchSampler,
    clip_boxes_to_patch,
    standardise_file,
)


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory) -> Path:
    return simulate_tiny(tmp_path_factory.mktemp("tiny_sim"), n_images=3, seed=5)


def test_simulated_hard_negatives_land_on_bright_structures_in_the_canonical_frame(tmp_path):
    from MicrocalcAI.simulation.config import SimulationConfig
    from MicrocalcAI.simulation.simulate import simulate_dataset

    config = SimulationConfig.realistic(
        n_images=3,
        seed=8,
        real_fraction=0.0,
        hard_negatives_per_image=(4, 4),
        hard_negative_types=("isolated_speck", "skin_marker"),
        spacing_mm=(0.07, 0.07),
        procedural_height_mm=(60.0, 65.0),
        procedural_width_mm=(45.0, 50.0),
    )
    coco = simulate_dataset(tmp_path / "sim", config)
    ds = CocoMammogramDataset(coco, spacing_mm=0.1, assumed_input_spacing_mm=0.05)
    ds.prepare()
    seen = 0
    for i in range(len(ds)):
        sample = ds[i]
        for x0, y0, x1, y1 in sample.hard_negatives:
            # Mapped through the same transform as the lesions: the look-alike is inside its box.
            r0, c0 = max(int(y0) - 1, 0), max(int(x0) - 1, 0)
            region = sample.image[r0 : int(np.ceil(y1)) + 1, c0 : int(np.ceil(x1)) + 1].astype(np.float32)
            ring = sample.image[max(r0 - 6, 0) : int(y1) + 7, max(c0 - 6, 0) : int(x1) + 7].astype(np.float32)
            assert region.max() > np.median(ring) + 0.01
            seen += 1
    assert seen >= 6


# -------------------------------------------------------------------- standardise + cache


def test_dataset_matches_inference_path_and_caches(tiny_coco, tmp_path):
    cache = tmp_path / "cache"
    ds = CocoMammogramDataset(tiny_coco, spacing_mm=0.1, assumed_input_spacing_mm=0.05, cache_dir=cache)
    ds.prepare()
    assert len(list(cache.glob("*.npz"))) == len(ds)
    for i, entry in enumerate(ds.entries):
        sample = ds[i]
        direct = standardise_file(entry.path, spacing_mm=0.1, assumed_input_spacing_mm=0.05)
        assert sample.image.shape == direct.image.shape
        np.testing.assert_allclose(sample.image.astype(np.float32), direct.image, atol=1e-3)
        np.testing.assert_allclose(sample.boxes, direct.transform.to_canonical_boxes(entry.boxes_stored), atol=1e-4)
        # The lesion boxes hold the bright calcifications: their top intensities beat the breast's.
        for box in sample.boxes.astype(int):
            region = sample.image[box[1] : box[3], box[0] : box[2]].astype(np.float32)
            assert region.max() > np.percentile(sample.image[sample.mask], 90)

    again = CocoMammogramDataset(tiny_coco, spacing_mm=0.1, assumed_input_spacing_mm=0.05, cache_dir=cache)
    np.testing.assert_array_equal(again[0].image, ds[0].image)
    assert len(list(cache.glob("*.npz"))) == len(ds)  # served from the cache, nothing new written

    stat = ds.entries[0].path.stat()
    os.utime(ds.entries[0].path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    CocoMammogramDataset(tiny_coco, spacing_mm=0.1, assumed_input_spacing_mm=0.05, cache_dir=cache)[0]
    assert len(list(cache.glob("*.npz"))) == len(ds) + 1  # a changed file is standardised again
    CocoMammogramDataset(tiny_coco, spacing_mm=0.2, assumed_input_spacing_mm=0.05, cache_dir=cache)[1]
    assert len(list(cache.glob("*.npz"))) == len(ds) + 2  # so is another spacing
    ne = NoiseEqualisation()
    equalised = CocoMammogramDataset(
        tiny_coco, spacing_mm=0.1, assumed_input_spacing_mm=0.05, cache_dir=cache, noise_equalisation=ne
    )[1]
    assert len(list(cache.glob("*.npz"))) == len(ds) + 3  # and a model setting that changes the input
    direct = standardise_file(ds.entries[1].path, spacing_mm=0.1, assumed_input_spacing_mm=0.05, noise_equalisation=ne)
    np.testing.assert_allclose(equalised.image.astype(np.float32), direct.image, atol=1e-3)
    assert not np.allclose(direct.image, ds[1].image.astype(np.float32), atol=1e-3)


# ---------------------------------------------------------------------------- patch sampler


def _exact_config(**flags) -> PatchConfig:
    base = dict(
        patch_size=128,
        background_fraction=0.0,
        hflip=False,
        vflip=False,
        rot90=False,
        gamma_range=(1.0, 1.0),
        contrast_range=(1.0, 1.0),
        min_box_side=1.0,
        min_visible_fraction=0.0,
    )
    base.update(flags)
    return PatchConfig(**base)


@pytest.mark.parametrize(
    "flags",
    [
        dict(hflip=True),
        dict(vflip=True),
        dict(rot90=True),
        dict(hflip=True, vflip=True, rot90=True, gamma_range=(0.7, 1.4), contrast_range=(0.8, 1.2)),
    ],
    ids=["hflip", "vflip", "rot90", "all"],
)
def test_augmented_boxes_cover_exactly_the_lesion_pixels(flags):
    sample = synthetic_sample()
    sampler = PatchSampler([sample], _exact_config(**flags), seed=3)
    moved = 0
    for _ in range(60):
        patch = sampler.sample()
        assert patch.image.shape == (128, 128) and patch.image.dtype == np.float32
        inside_bright, outside_dark = box_pixels_are_lesion(patch.image, patch.boxes)
        assert inside_bright and outside_dark
        # Where the boxes would be without augmentation: proves the augmentation did act.
        _, r0, c0 = patch.source
        plain = np.clip(sample.boxes - np.array([c0, r0, c0, r0]), 0, 128)
        plain = plain[(plain[:, 2] > plain[:, 0]) & (plain[:, 3] > plain[:, 1])]
        if len(plain) != len(patch.boxes) or not np.allclose(np.sort(plain, axis=0), np.sort(patch.boxes, axis=0)):
            moved += 1
    assert moved >= 10


def test_scale_jitter_resamples_patch_and_boxes_alike():
    # One 60 x 40 lesion; with +-40% scale jitter its box must scale with the pixels, so the
    # bright region (the resampled lesion, edges at half height) fills the box; and the window
    # (128 / 1.4 = 91 pixels at the smallest) is placed so that the lesion, which fits, is whole.
    sample = synthetic_sample(boxes=((100, 150, 160, 190),), labels=(2,))
    sampler = PatchSampler([sample], _exact_config(scale_range=(1 / 1.4, 1.4)), seed=5)
    widths = []
    for _ in range(40):
        patch = sampler.sample()
        assert patch.image.shape == (128, 128) and patch.image.dtype == np.float32
        assert len(patch.boxes) == 1
        x0, y0, x1, y1 = (float(v) for v in patch.boxes[0])
        assert 0 <= x0 and 0 <= y0 and x1 <= 128 and y1 <= 128
        scale = (x1 - x0) / 60.0
        assert (y1 - y0) == pytest.approx(40.0 * scale, rel=1e-5)  # never clipped, so never distorted
        rows, cols = np.nonzero(patch.image > 0.5)
        # Half-height edges: the resampled step crosses 0.5 within a quarter pixel of the box edge.
        for found, edge in ((cols.min(), x0), (cols.max() + 1, x1), (rows.min(), y0), (rows.max() + 1, y1)):
            assert abs(found - edge) <= 0.75
        widths.append(x1 - x0)
    # Both ways, within the range (the window is a whole number of pixels: 179 to 91).
    assert 60 * 128 / 179 - 0.01 <= min(widths) < 55 and 65 < max(widths) <= 60 * 128 / 91 + 0.01


def test_scale_range_is_validated_and_off_by_default():
    assert PatchConfig().scale_range == (1.0, 1.0)
    for bad in ((1.4, 0.7), (0.1, 1.0), (1.0, 5.0), (0.8, 1.0, 1.2)):
        with pytest.raises(DatasetError, match="scale_range"):
            PatchConfig(scale_range=bad)


def test_lesion_patches_contain_the_whole_lesion_at_varying_positions():
    sample = synthetic_sample(boxes=((100, 150, 160, 190),), labels=(2,))
    sampler = PatchSampler([sample], _exact_config(), seed=0)
    origins = set()
    for _ in range(40):
        patch = sampler.sample()
        assert len(patch.boxes) == 1
        x0, y0, x1, y1 = patch.boxes[0]
        assert (x1 - x0, y1 - y0) == (60, 40)  # never clipped: it fits, so it is inside
        origins.add((round(float(x0)), round(float(y0))))
    assert len(origins) > 20  # jittered, not always centred


def test_class_balance_and_background_fraction():
    boxes = [(10 + 30 * i, 10, 30 + 30 * i, 30) for i in range(9)] + [(10, 300, 30, 320)]
    labels = [1] * 9 + [2]  # nine benign lesions, one malignant
    sample = synthetic_sample(shape=(400, 300), boxes=boxes, labels=labels)
    sampler = PatchSampler([sample], _exact_config(patch_size=64, malignant_fraction=0.5), seed=1)
    malignant = sum(2 in sampler.sample().labels for _ in range(400))
    assert 150 < malignant < 250  # about half, although only 1 of 10 lesions is malignant

    mask = np.zeros((400, 300), dtype=bool)
    mask[300:, 200:] = True  # breast only in the bottom-right corner
    bg = PatchSampler([synthetic_sample(mask=mask)], _exact_config(patch_size=64, background_fraction=1.0), seed=2)
    for _ in range(50):
        _, r0, c0 = bg.sample().source
        assert mask[r0 : r0 + 64, c0 : c0 + 64].any()


def test_hard_negative_patches_hold_the_look_alike_at_varying_positions():
    sample = synthetic_sample(shape=(600, 500), boxes=((40, 60, 90, 80),), labels=(1,))
    sample.hard_negatives = np.array([[300, 400, 310, 412]], dtype=np.float32)
    sampler = PatchSampler(
        [sample], _exact_config(patch_size=64, background_fraction=1.0, hard_negative_fraction=1.0), seed=4
    )
    origins = set()
    for _ in range(40):
        patch = sampler.sample()
        _, r0, c0 = patch.source
        assert c0 <= 300 and 310 <= c0 + 64 and r0 <= 400 and 412 <= r0 + 64  # whole look-alike inside
        assert len(patch.boxes) == 0  # and it is not a lesion
        origins.add((r0, c0))
    assert len(origins) > 15
    # Without recorded hard negatives the same setting falls back to random breast patches.
    plain = PatchSampler(
        [synthetic_sample(shape=(600, 500))],
        _exact_config(patch_size=64, background_fraction=1.0, hard_negative_fraction=1.0),
        seed=4,
    )
    assert len({plain.sample().source for _ in range(20)}) > 10
    with pytest.raises(DatasetError, match="hard_negative_fraction"):
        PatchConfig(hard_negative_fraction=1.5)


def test_sampler_is_deterministic_and_state_round_trips():
    sample = synthetic_sample()
    cfg = PatchConfig(patch_size=96)
    a, b = PatchSampler([sample], cfg, seed=9), PatchSampler([sample], cfg, seed=9)
    for _ in range(5):
        pa, pb = a.sample(), b.sample()
        np.testing.assert_array_equal(pa.image, pb.image)
        np.testing.assert_array_equal(pa.boxes, pb.boxes)
    state = a.get_state()
    first = [a.sample() for _ in range(3)]
    c = PatchSampler([sample], cfg, seed=123)
    c.set_state(state)
    for p, q in zip(first, [c.sample() for _ in range(3)]):
        np.testing.assert_array_equal(p.image, q.image)
        assert p.source == q.source


def test_clipping_drops_tiny_remnants_and_keeps_large_parts():
    boxes = np.array([[-50, 10, 2, 40], [-10, 10, 30, 40], [90, 90, 130, 130]], dtype=np.float64)
    labels = np.array([1, 2, 1])
    kept, kept_labels = clip_boxes_to_patch(boxes, labels, size=100, min_side=3, min_visible_fraction=0.35)
    np.testing.assert_allclose(kept, [[0, 10, 30, 40]])  # 75% visible kept; 2 px sliver and 6% corner dropped
    assert kept_labels.tolist() == [2]


def test_unusable_images_fail_clearly_or_are_skipped_when_asked(tiny_coco, tmp_path):
    import json

    data = json.loads(tiny_coco.read_text())
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"DICM" * 10)  # not a readable image
    data["images"] = [dict(img, file_name=str(tiny_coco.parent / img["file_name"])) for img in data["images"]]
    data["images"].append({"id": 999, "file_name": str(broken)})
    coco = tmp_path / "with_broken.json"
    coco.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="broken.dcm"):
        CocoMammogramDataset(coco, spacing_mm=0.1, assumed_input_spacing_mm=0.05).prepare()
    ds = CocoMammogramDataset(coco, spacing_mm=0.1, assumed_input_spacing_mm=0.05, skip_unusable=True)
    ds.prepare()
    assert len(ds) == len(data["images"]) - 1 and [p.name for p, _ in ds.skipped] == ["broken.dcm"]
    assert all(s.path != broken for s in (ds[i] for i in range(len(ds))))
