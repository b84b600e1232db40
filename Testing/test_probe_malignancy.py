"""benchmarks/probe_malignancy_features.py's analysis: the cross-validated re-fit and the
comparison with the head's own p_malignant, on features built so the answer is known."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="module")
def probe(benchmark_script: Any) -> Iterator[Any]:
    with benchmark_script("probe_malignancy_features") as module:
        yield module


def _data(rng: np.random.Generator, n: int = 240) -> dict[str, np.ndarray]:
    """Class carried by feature 3 only; the 'head' logit is noise, so a re-fit must beat it."""
    y = rng.random(n) < 0.5
    X = rng.normal(size=(n, 8))
    X[:, 3] += np.where(y, 2.5, -2.5)
    return {
        "X": X,
        "logit": rng.normal(size=n),
        "y": y,
        "group": np.arange(n) % 4,
        "row": np.arange(n) % 2,
        "morphology": np.array(["x"] * n, dtype=object),
        "blur_mm": np.full(n, 0.1),
    }


def test_refit_on_other_groups_finds_information_the_head_lacks(probe: Any) -> None:
    data = _data(np.random.default_rng(0))
    refit = probe.cross_validated_logits(data["X"], data["y"], data["group"], c=0.1)
    assert not np.isnan(refit).any()
    result = probe.compare(data, {"re-fit": refit})
    assert result["n"] == 240
    assert result["re-fit"]["auc"] > 0.95 and result["re-fit"]["accuracy"] > 0.9
    assert 0.35 < result["head"]["auc"] < 0.65  # noise
    assert set(result["re-fit"]["per_row"]) == {0, 1}
    result["detail"] = {"head": probe.by_morphology_and_blur(data)}
    table = probe.markdown(result, ["row a", "row b"], "test model")
    assert "| re-fit |" in table and "Rows: 1 row a; 2 row b" in table
    assert "| detail |" not in table and "| without_lesion |" not in table  # not scorers: tables of their own
    assert "| 0.095-0.12 |" in table and f"| x | {int(data['y'].sum())} |" in table


def test_refit_is_scored_only_on_groups_it_was_not_fitted_on(probe: Any) -> None:
    """A label that is a pure function of the group is unlearnable out of group: every fold's
    training data holds only the other class, so no fold can be fitted and nothing is scored."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 3))
    groups = np.repeat([0, 1], 20)
    y = groups == 1
    X[:, 0] = np.where(y, 5.0, -5.0)  # perfectly separable *within* the data
    refit = probe.cross_validated_logits(X, y, groups, c=1.0)
    assert np.isnan(refit).all()


def test_head_detail_shows_a_class_that_follows_blur(probe: Any) -> None:
    """Benign clusters called malignant only when blurred, malignant ones always: the blur bands
    must show it; a morphology the head separates perfectly from benign has AUC 1."""
    y = np.array([False] * 6 + [True] * 4)
    blur = np.array([0.08, 0.08, 0.10, 0.10, 0.14, 0.15, 0.08, 0.10, 0.14, 0.15])
    logit = np.array([-2.0, -1.5, 1.0, 1.2, 2.0, 2.5, 3.0, 3.1, 3.2, 3.3])
    morphology = np.array(["punctate"] * 6 + ["fine_linear_branching"] * 2 + ["amorphous"] * 2, dtype=object)
    detail = probe.by_morphology_and_blur({"y": y, "logit": logit, "morphology": morphology, "blur_mm": blur})
    bands = detail["by_blur_mm"]
    assert bands["0.07-0.095"]["benign"] == {"called_malignant": 0.0, "n": 2}
    assert bands["0.095-0.12"]["benign"] == {"called_malignant": 1.0, "n": 2}
    assert bands["0.12-0.15"]["benign"]["n"] == 2  # 0.15 itself is in the last band
    assert bands["0.12-0.15"]["malignant"] == {"called_malignant": 1.0, "n": 2}
    assert detail["by_morphology"]["fine_linear_branching"] == {"auc_vs_benign": 1.0, "n": 2}
    assert detail["by_morphology"]["amorphous"]["auc_vs_benign"] == 1.0
    assert set(detail["by_morphology"]) == {"amorphous", "fine_linear_branching"}


def test_best_finder_is_the_highest_scoring_proposal_that_finds_the_cluster_at_the_floor(probe: Any) -> None:
    truth = np.array([[100.0, 100.0, 120.0, 120.0], [300.0, 300.0, 310.0, 310.0], [500.0, 500.0, 520.0, 520.0]])
    regressed = np.array(
        [
            [101.0, 101.0, 119.0, 119.0],  # finds cluster 0, score 0.5
            [98.0, 98.0, 122.0, 122.0],  # finds cluster 0, score 0.8: the best
            [100.0, 100.0, 121.0, 121.0],  # finds cluster 0, but under the floor
            [302.0, 302.0, 308.0, 308.0],  # finds cluster 1 (centre inside), under the floor
            [700.0, 700.0, 720.0, 720.0],  # finds nothing
        ]
    )
    scores = np.array([0.5, 0.8, 0.05, 0.05, 0.99])
    assert probe.best_finders_at_floor(regressed, scores, truth, floor=0.09) == [1, None, None]
    assert probe.best_finders_at_floor(regressed, scores, truth, floor=0.01) == [1, 3, None]


def test_logit_is_the_label_rule_on_the_decision_scale(probe: Any) -> None:
    values = probe.logit(np.array([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert np.all(np.isfinite(values)) and values[2] == 0.0
    assert values[1] == pytest.approx(-np.log(3)) and values[3] == pytest.approx(np.log(3))
    assert list(values >= 0) == [False, False, True, True, True]  # malignant when p >= 0.5


def _lesion(box_px: tuple[float, float, float, float], score: float, specks: list[Any], spacing: float = 0.1) -> Any:
    from MicrocalcAI.core.records import Lesion

    box_mm = tuple(v * spacing for v in box_px)
    area = (box_mm[2] - box_mm[0]) * (box_mm[3] - box_mm[1])
    return Lesion(1, box_px, box_mm, "benign", score, 0.3, area, specks=specks)  # type: ignore[arg-type]


def _speck(x: float, y: float, diameter_mm: float) -> Any:
    from MicrocalcAI.core.records import Speck

    area = np.pi * diameter_mm**2 / 4
    return Speck((x, y), int(round(area / 0.01)), area, diameter_mm)


def test_lesion_cues_read_count_spacing_spread_and_size_variation_in_mm(probe: Any) -> None:
    # Three specks on a line 20 px (2 mm at 0.1 mm) apart, diameters 0.2 / 0.3 / 0.4 mm, in a 60 x 30 px box.
    specks = [_speck(110, 115, 0.2), _speck(130, 115, 0.3), _speck(150, 115, 0.4)]
    cues = dict(zip(probe.CUE_NAMES, probe.lesion_cues(_lesion((100, 100, 160, 130), 0.8, specks), (0.1, 0.1))))
    assert cues["log long side mm"] == pytest.approx(np.log(6.0))
    assert cues["log short side mm"] == pytest.approx(np.log(3.0))
    assert cues["log specks"] == pytest.approx(np.log1p(3))
    assert cues["log specks per cm2 of box"] == pytest.approx(np.log1p(3 / 0.18))
    assert cues["log densest specks in 1 cm2"] == pytest.approx(np.log1p(3))  # all within 5.6 mm of the middle one
    assert cues["mean speck diameter mm"] == pytest.approx(0.3)
    assert cues["speck diameter CV"] == pytest.approx(np.std([0.2, 0.3, 0.4]) / 0.3)
    assert cues["largest speck diameter mm"] == pytest.approx(0.4)
    assert cues["log median nearest-neighbour mm"] == pytest.approx(np.log(2.0))
    assert cues["log speck spread mm"] == pytest.approx(np.log(np.sqrt(8 / 3)))
    assert cues["detector score logit"] == pytest.approx(np.log(4.0))
    # The column spacing scales x, the row spacing y: doubling the column spacing doubles the gaps.
    wide = dict(zip(probe.CUE_NAMES, probe.lesion_cues(_lesion((100, 100, 160, 130), 0.8, specks), (0.1, 0.2))))
    assert wide["log median nearest-neighbour mm"] == pytest.approx(np.log(4.0))


def test_lesion_cues_stay_finite_without_specks(probe: Any) -> None:
    for specks in ([], [_speck(110, 115, 0.3)]):
        cues = probe.lesion_cues(_lesion((100, 100, 140, 120), 0.5, specks), (0.1, 0.1))
        assert cues.shape == (len(probe.CUE_NAMES),) and np.all(np.isfinite(cues))
        named = dict(zip(probe.CUE_NAMES, cues))
        assert named["speck diameter CV"] == 0.0 and named["log median nearest-neighbour mm"] == pytest.approx(
            np.log(4)
        )


def test_cues_come_from_the_highest_scoring_lesion_that_finds_each_cluster(probe: Any) -> None:
    truth = np.array([[100.0, 100.0, 140.0, 140.0], [400.0, 400.0, 420.0, 420.0]])
    lesions = [
        _lesion((95, 95, 145, 145), 0.4, [_speck(120, 120, 0.3)]),
        _lesion((110, 110, 130, 130), 0.9, [_speck(115, 115, 0.3), _speck(125, 125, 0.3)]),  # the best finder
        _lesion((600, 600, 620, 620), 0.99, []),  # finds nothing
    ]
    cues = probe.finding_lesion_cues(lesions, (0.1, 0.1), truth)
    assert cues[1] is None and cues[0] is not None
    assert dict(zip(probe.CUE_NAMES, cues[0]))["log specks"] == pytest.approx(np.log1p(2))
    assert probe.finding_lesion_cues([], (0.1, 0.1), truth) == [None, None]


def test_cue_refits_are_scored_on_the_clusters_with_a_lesion_and_split_out_grouped_ones(probe: Any) -> None:
    rng = np.random.default_rng(2)
    data = _data(rng)
    n = len(data["y"])
    cues = rng.normal(size=(n, len(probe.CUE_NAMES)))
    cues[:, 2] += np.where(data["y"], 2.0, -2.0)  # the speck count carries the class
    cues[:10] = np.nan  # no reported lesion found these
    data["cues"] = cues
    data["distribution"] = np.array(["grouped", "diffuse"] * (n // 2), dtype=object)
    assert probe.with_lesion(data).sum() == n - 10
    refits, detailed = probe.fit_and_score(data, None, [0.1], "")
    assert set(refits) == {
        "head, clusters with a lesion",
        "box-head features, other films, C=0.1",
        "cues, other films, C=0.1",
        "head logit + cues, other films, C=0.1",
    }
    assert detailed == ["head", "head, clusters with a lesion", "head logit + cues, other films, C=0.1"]
    # The box-head re-fit scores every found cluster; the cue re-fits only those with a lesion.
    assert not np.isnan(refits["box-head features, other films, C=0.1"]).any()
    for name in ("head, clusters with a lesion", "cues, other films, C=0.1", "head logit + cues, other films, C=0.1"):
        assert np.isnan(refits[name][:10]).all() and not np.isnan(refits[name][10:]).any()
    result = probe.compare(data, refits)
    assert result["head"]["n"] == n and result["cues, other films, C=0.1"]["n"] == n - 10
    assert result["cues, other films, C=0.1"]["auc"] > 0.9 > result["head"]["auc"]
    scored_grouped = int(((data["distribution"] == "grouped") & probe.with_lesion(data)).sum())
    assert result["cues, other films, C=0.1"]["grouped"]["n"] == scored_grouped
    assert result["head"]["grouped"]["n"] == n // 2
    result["detail"] = {name: probe.by_morphology_and_blur(data, refits.get(name)) for name in detailed}
    table = probe.markdown(result, ["row a", "row b"], "test model")
    assert "AUC grouped (clusters)" in table and f"| cues, other films, C=0.1 | {n - 10} |" in table
    assert f"| head | {n} |" in table
    assert (
        "| morphology | clusters | head | head, clusters with a lesion | head logit + cues, other films, C=0.1 |"
        in table
    )


def test_fits_on_a_labelled_set_use_its_rows_with_a_lesion_for_the_cues(probe: Any) -> None:
    rng = np.random.default_rng(3)
    data, train = _data(rng), _data(rng, n=200)
    for d in (data, train):
        d["cues"] = rng.normal(size=(len(d["y"]), len(probe.CUE_NAMES)))
        d["cues"][:, 0] += np.where(d["y"], 2.0, -2.0)
    train["cues"][:5] = np.nan  # rows without a lesion must not reach the cue fit (it would fail on nan)
    refits, _ = probe.fit_and_score(data, train, [1.0], "sim")
    assert refits["cues, fit on sim, C=1"].shape == data["y"].shape
    assert probe.compare(data, refits)["cues, fit on sim, C=1"]["auc"] > 0.9
    assert not np.isnan(refits["box-head features, fit on sim, C=1"]).any()
