"""benchmarks/diagnose_unmarked_clusters.py: the stage that lost each cluster, and agreement with
the real-film benchmark on the same delivery (real films, the bundled model, real torch)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="module")
def diagnose(benchmark_script: Any) -> Iterator[Any]:
    with benchmark_script("diagnose_unmarked_clusters") as module:
        yield module


def _record(**values: Any) -> dict[str, Any]:
    return {"proposed": 5, "roi": 0.5, "tile": 0.5, "marked": None} | values


def test_each_unmarked_cluster_gets_the_first_stage_that_lost_it(diagnose: Any) -> None:
    floor = 0.09
    assert diagnose.stage_lost(_record(marked=0.3), floor) is None
    assert diagnose.stage_lost(_record(proposed=0, roi=None, tile=None), floor) == "not proposed"
    # Proposed, but every regressed box moved off it; or not proposed, but a regressed box
    # landed on it: then its score decides.
    assert diagnose.stage_lost(_record(roi=None, tile=None), floor) == "regressed off"
    assert diagnose.stage_lost(_record(proposed=0, roi=0.13, tile=None), floor) == "lost in tile NMS"
    assert diagnose.stage_lost(_record(roi=0.005, tile=None), floor) == "head < 0.01"
    assert diagnose.stage_lost(_record(roi=0.05, tile=0.05), floor) == "head below floor"
    assert diagnose.stage_lost(_record(roi=0.6, tile=None), floor) == "lost in tile NMS"
    assert diagnose.stage_lost(_record(roi=0.6, tile=0.6), floor) == "lost in merging"
    # Marked below the evaluation floor is not marked.
    assert diagnose.stage_lost(_record(marked=0.01), floor) == "lost in merging"


def test_covering_counts_the_share_of_the_truth_box_inside(diagnose: Any) -> None:
    truth = np.array([[0.0, 0, 10, 10], [100.0, 100, 110, 110]])
    boxes = np.array([[-5.0, -5, 6, 20], [0.0, 0, 4, 4]])
    # Box 0 covers 60% of truth 0 and none of truth 1; box 1 covers 16% of truth 0.
    assert diagnose._covering(boxes, truth).tolist() == [[True, False], [False, False]]
    assert diagnose._covering(boxes, truth, 0.1).tolist() == [[True, False], [True, False]]


@pytest.mark.slow
def test_the_diagnostic_sees_what_the_benchmark_marks(diagnose: Any) -> None:
    bench = diagnose.bench
    films = bench.load_held_out_films()[:1]
    from MicrocalcAI.core.pipeline import Analyzer
    from MicrocalcAI.evaluation.curves import EVAL_MIN_SCORE

    analyzer = Analyzer(None, device="cpu", score_threshold=EVAL_MIN_SCORE)
    condition = bench.Condition(0.2, 0.05, 0.0, 8, analyzer.upsampling or bench._default_upsampling())
    marks = bench.run_condition(analyzer, films, condition, clusters=6)[0]
    raw = diagnose.RawOutputs(analyzer.model)
    try:
        records = diagnose.diagnose_image(
            analyzer, raw, films[0], condition, bench.delivery_seed(0, condition, 0), 6, bench.ClusterPopulation()
        )
    finally:
        raw.remove()
    assert len(records) == marks.hits.shape[1] == 6
    # The benchmark's "marked at any score" and the diagnostic's agree cluster by cluster.
    marked_by_bench = [bool((marks.scores[marks.hits[:, g]] >= EVAL_MIN_SCORE).any()) for g in range(6)]
    marked_here = [r["marked"] is not None and r["marked"] >= EVAL_MIN_SCORE for r in records]
    assert marked_here == marked_by_bench
    assert any(marked_here)
    for rec in records:  # a marked cluster was proposed and scored by the head first
        if rec["marked"] is not None:
            assert rec["roi"] is not None and rec["tile"] is not None
            assert rec["roi"] >= rec["tile"] - 1e-6  # tile outputs are a subset of the head's boxes
