"""benchmarks/bench_real_film.py's summary of one condition: sensitivity at the threshold, the
"found by any mark" ceiling (clusters no threshold can reach), false marks and the per-morphology
counts, on marks built by hand so every number is known."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_real_film.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_real_film", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_real_film"] = module  # dataclasses resolve their module by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_real_film", None)


def _image(bench, scores, hits, morphologies):
    scores = np.asarray(scores, float)
    return bench.ImageMarks(
        scores=scores,
        specks_in_cm2=np.full(scores.shape, 5),
        hits=np.asarray(hits, bool).reshape(len(scores), len(morphologies)),
        edge_mm=np.full(scores.shape, 10.0),
        seconds=1.0,
        morphologies=list(morphologies),
    )


def test_summary_separates_low_scores_from_never_proposed_clusters(bench):
    condition = bench.Condition(spacing_mm=0.2, film_blur_mm=0.05, added_blur_mm=0.0, bits=8, upsampling="lanczos")
    # Image 1: cluster 0 found at 0.9, cluster 1 only at 0.2 (below the threshold), one false mark at 0.6.
    first = _image(bench, [0.9, 0.2, 0.6], [[1, 0], [0, 1], [0, 0]], ["amorphous", "punctate"])
    # Image 2: cluster 0 never marked, cluster 1 found at 0.7; no false mark.
    second = _image(bench, [0.7], [[0, 1]], ["amorphous", "punctate"])
    result = bench.summarise(condition, [first, second], min_specks=0, threshold=0.5)

    assert result.n_clusters == 4 and result.n_images == 2
    assert result.sensitivity == pytest.approx(2 / 4)  # 0.9 and 0.7
    assert result.sensitivity_any_mark == pytest.approx(3 / 4)  # every cluster but the unmarked one
    assert result.false_marks_per_image == pytest.approx(1 / 2)
    assert result.found_by_morphology == {"amorphous": [1, 2], "punctate": [1, 2]}
    assert result.any_mark_by_morphology == {"amorphous": [1, 2], "punctate": [2, 2]}

    table = bench.markdown_table([result], "test model")
    assert "| found by any mark |" in table and "| 0.75 |" in table
    any_mark = table.split("Found by any mark")[1]
    assert "| 1 | 1/2 | 2/2 |" in any_mark
