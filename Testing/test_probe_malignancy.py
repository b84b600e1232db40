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
    result["head_detail"] = probe.head_by_morphology_and_blur(data)
    table = probe.markdown(result, ["row a", "row b"], "test model")
    assert "| re-fit |" in table and "Rows: 1 row a; 2 row b" in table
    assert "| head_detail |" not in table  # the detail has its own tables
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
    detail = probe.head_by_morphology_and_blur({"y": y, "logit": logit, "morphology": morphology, "blur_mm": blur})
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
