"""benchmarks/bench_real_film.py's cluster population: which distributions the inserted clusters
are drawn in, and that each delivery's details say so (the probe reads them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from MicrocalcAI.simulation.calcifications import BIOPSIED_DISTRIBUTIONS


@pytest.fixture(scope="module")
def bench(benchmark_script: Any) -> Iterator[Any]:
    with benchmark_script("bench_real_film") as module:
        yield module


def _film(spacing: float = 0.2) -> np.ndarray:
    """An 8-bit 'film': a half-disc breast against the left border on dark air."""
    rows, cols = 900, 600
    r, c = np.mgrid[0:rows, 0:cols]
    breast = (r - rows / 2) ** 2 + c**2 < (0.9 * cols) ** 2
    image = np.where(breast, 140.0, 6.0) + np.random.default_rng(0).normal(0.0, 2.0, (rows, cols))
    return np.clip(image, 0, 255).astype(np.float32)


def test_the_default_population_is_biopsied_clusters_in_biopsied_distributions(bench: Any) -> None:
    assert bench.ClusterPopulation().distributions == BIOPSIED_DISTRIBUTIONS
    assert bench.distributions_chosen("biopsied") == BIOPSIED_DISTRIBUTIONS and bench.distributions_chosen("all") == ()


@pytest.mark.parametrize("option", ["biopsied", "all"])
def test_inserted_clusters_report_their_distribution(bench: Any, option: str) -> None:
    population = bench.ClusterPopulation(distributions=bench.distributions_chosen(option))
    details: list[dict[str, Any]] = []
    for seed in range(6):
        _, truth, more = bench.insert_clusters(
            _film(), 0.2, "L", "CC", np.random.default_rng(seed), 4, population=population
        )
        assert len(truth) == len(more)
        details += more
    assert details and all({"category", "morphology", "distribution", "blur_sigma_mm"} <= set(d) for d in details)
    spreads = {d["distribution"] for d in details if d["morphology"] == "punctate"}
    if option == "biopsied":
        assert {d["distribution"] for d in details} <= set(BIOPSIED_DISTRIBUTIONS) and spreads == {"grouped"}
    else:
        assert spreads & {"regional", "diffuse"}  # punctate's own spreads, the definition before 2026-12-03


def test_clusters_over_an_mlo_views_pectoral_muscle_are_tagged_and_placed_as_before(bench: Any) -> None:
    film = _film()
    r, c = np.mgrid[0 : film.shape[0], 0 : film.shape[1]]
    muscle = (c / 250 + r / 500 < 1) & (film > 100)  # a bright triangle in the upper chest-wall corner
    film[muscle] += 60
    details: list[dict[str, Any]] = []
    for seed in range(8):
        mlo, truth, more = bench.insert_clusters(film, 0.2, "L", "MLO", np.random.default_rng(seed), 4)
        cc, truth_cc, _ = bench.insert_clusters(film, 0.2, "L", "CC", np.random.default_rng(seed), 4)
        # The tag only says where a cluster lies: the same clusters land in the same places.
        assert np.array_equal(mlo, cc) and np.array_equal(truth, truth_cc)
        for box, d in zip(truth, more):
            centre = muscle[int((box[1] + box[3]) / 2), int((box[0] + box[2]) / 2)]
            # Boxes are centred on the cluster within a few pixels; only clusters near the edge may differ.
            near_edge = abs((box[0] + box[2]) / 2 / 250 + (box[1] + box[3]) / 2 / 500 - 1) < 0.05
            assert near_edge or (d["place"] == "pectoral muscle") == centre
        details += more
    assert {d["place"] for d in details} == {"pectoral muscle", "breast"}
    _, _, on_cc = bench.insert_clusters(film, 0.2, "L", "CC", np.random.default_rng(0), 4)
    assert {d["place"] for d in on_cc} == {"breast"}  # a CC view has no muscle
