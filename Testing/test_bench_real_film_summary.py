"""benchmarks/bench_real_film.py's summary of one condition: sensitivity at the threshold, the
"found by any mark" ceiling (clusters no threshold can reach), false marks and the per-morphology
counts, on marks built by hand so every number is known."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_real_film.py"


@pytest.fixture(scope="module")
def bench() -> Iterator[Any]:
    spec = importlib.util.spec_from_file_location("bench_real_film", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_real_film"] = module  # dataclasses resolve their module by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_real_film", None)


def _image(bench: Any, scores: list[float], hits: list[list[int]], morphologies: list[str]) -> Any:
    scores = np.asarray(scores, float)
    return bench.ImageMarks(
        scores=scores,
        specks_in_cm2=np.full(scores.shape, 5),
        hits=np.asarray(hits, bool).reshape(len(scores), len(morphologies)),
        edge_mm=np.full(scores.shape, 10.0),
        seconds=1.0,
        morphologies=list(morphologies),
    )


def test_summary_separates_low_scores_from_unmarked_clusters(bench: Any) -> None:
    condition = bench.Condition(spacing_mm=0.2, film_blur_mm=0.05, added_blur_mm=0.0, bits=8, upsampling="lanczos")
    # Image 1: cluster 0 found at 0.9, cluster 1 only at 0.2 (below the threshold), one false mark at 0.6.
    first = _image(bench, [0.9, 0.2, 0.6], [[1, 0], [0, 1], [0, 0]], ["amorphous", "punctate"])
    # Image 2: cluster 0 marked only below the evaluation floor (0.01), cluster 1 found at 0.7;
    # two false marks at 0.95, so that at 1 false mark per image only the 0.9 and 0.7 finds count.
    second = _image(bench, [0.7, 0.01, 0.95, 0.95], [[0, 1], [1, 0], [0, 0], [0, 0]], ["amorphous", "punctate"])
    result = bench.summarise(condition, [first, second], min_specks=0, threshold=0.5)

    assert result.n_clusters == 4 and result.n_images == 2
    assert result.sensitivity == pytest.approx(2 / 4)  # 0.9 and 0.7
    assert result.sensitivity_any_mark == pytest.approx(3 / 4)  # every cluster but the one below the floor
    assert result.false_marks_per_image == pytest.approx(3 / 2)
    assert result.sensitivity_at_fp["1"] == pytest.approx(2 / 4)
    assert result.found_by_morphology == {"amorphous": [1, 2], "punctate": [1, 2]}
    assert result.any_mark_by_morphology == {"amorphous": [1, 2], "punctate": [2, 2]}

    table = bench.markdown_table([result], "test model")
    assert "| found by any mark | s/image |" in table
    cells = [cell.strip() for cell in table.splitlines()[4].split("|")[1:-1]]
    assert cells[-3:] == ["0.50", "0.75", "1.0"]  # sens @1 FP, found by any mark, s/image
    any_mark = table.split("Found by any mark")[1]
    assert "| 1 | 1/2 | 2/2 |" in any_mark
