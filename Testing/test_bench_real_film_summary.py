"""benchmarks/bench_real_film.py's summary of one condition: sensitivity at the threshold, the
"found by any mark" ceiling (clusters no threshold can reach), false marks and the per-morphology
counts, on marks built by hand so every number is known."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(benchmark_script: Any) -> Iterator[Any]:
    with benchmark_script("bench_real_film") as module:
        yield module


def _image(
    bench: Any,
    scores: list[float],
    hits: list[list[int]],
    morphologies: list[str],
    categories: list[str],
    labels: list[str],
    p_malignant: list[float],
) -> Any:
    scores = np.asarray(scores, float)
    return bench.ImageMarks(
        scores=scores,
        specks_in_cm2=np.full(scores.shape, 5),
        hits=np.asarray(hits, bool).reshape(len(scores), len(morphologies)),
        edge_mm=np.full(scores.shape, 10.0),
        seconds=1.0,
        morphologies=list(morphologies),
        categories=list(categories),
        labels=list(labels),
        p_malignant=np.asarray(p_malignant, float),
    )


def test_summary_separates_low_scores_from_unmarked_clusters(bench: Any) -> None:
    condition = bench.Condition(spacing_mm=0.2, film_blur_mm=0.05, added_blur_mm=0.0, bits=8, upsampling="lanczos")
    # Image 1: cluster 0 (malignant) found at 0.9 (called malignant) and at 0.55 (called benign:
    # the match is the higher-scoring mark), cluster 1 only at 0.2 (below the threshold), one
    # false mark at 0.6.
    first = _image(
        bench,
        [0.9, 0.2, 0.6, 0.55],
        [[1, 0], [0, 1], [0, 0], [1, 0]],
        ["amorphous", "punctate"],
        ["malignant", "benign"],
        ["malignant", "benign", "malignant", "benign"],
        [0.8, 0.3, 0.7, 0.2],
    )
    # Image 2: cluster 0 marked only below the evaluation floor (0.01), cluster 1 (benign) found
    # at 0.7 but called malignant; two false marks at 0.95, so that at 1 false mark per image
    # only the 0.9 and 0.7 finds count.
    second = _image(
        bench,
        [0.7, 0.01, 0.95, 0.95],
        [[0, 1], [1, 0], [0, 0], [0, 0]],
        ["amorphous", "punctate"],
        ["malignant", "benign"],
        ["malignant", "benign", "benign", "benign"],
        [0.6, 0.2, 0.1, 0.1],
    )
    result = bench.summarise(condition, [first, second], min_specks=0, threshold=0.5)

    assert result.n_clusters == 4 and result.n_images == 2
    assert result.sensitivity == pytest.approx(2 / 4)  # 0.9 and 0.7
    assert result.sensitivity_any_mark == pytest.approx(3 / 4)  # every cluster but the one below the floor
    assert result.false_marks_per_image == pytest.approx(3 / 2)
    assert result.sensitivity_at_fp["1"] == pytest.approx(2 / 4)
    assert result.found_by_morphology == {"amorphous": [1, 2], "punctate": [1, 2]}
    assert result.any_mark_by_morphology == {"amorphous": [1, 2], "punctate": [2, 2]}
    # No places recorded: every cluster counts as on the breast.
    assert result.found_by_place == {"breast": [2, 3, 4]}
    first.places, second.places = ["pectoral muscle", "breast"], ["breast", "pectoral muscle"]
    by_place = bench.summarise(condition, [first, second], min_specks=0, threshold=0.5).found_by_place
    assert by_place == {"breast": [0, 1, 2], "pectoral muscle": [2, 2, 2]}
    # Classification, misses wrong: only image 1's cluster 0 is found *and* called right.
    assert result.lesion_accuracy == pytest.approx(1 / 4)
    assert result.class_accuracy_found == pytest.approx(1 / 2)
    assert result.auc_benign_vs_malignant_found == pytest.approx(1.0)  # p 0.8 (malignant) > 0.6 (benign)
    assert result.called_malignant_by_morphology == {"amorphous": [1, 1], "punctate": [1, 1]}

    table = bench.markdown_table([result], "test model")
    assert "| found by any mark | lesion accuracy | class right, found | AUC b/m, found | s/image |" in table
    cells = [cell.strip() for cell in table.splitlines()[4].split("|")[1:-1]]
    assert cells[-6:] == ["0.50", "0.75", "0.25", "0.50", "1.00", "1.0"]
    any_mark = table.split("Found by any mark")[1]
    assert "| 1 | 1/2 | 2/2 |" in any_mark.split("Called malignant")[0]
    assert "| 1 | 1/1 | 1/1 |" in table.split("Called malignant")[1]
    assert table.split("By where the cluster's centre lies")[1].splitlines()[-1] == "| 1 | 2/3/4 |"


def test_cluster_rule_changes_which_mark_matches(bench: Any) -> None:
    """The cluster rule removes marks before matching: the lower-scoring mark with enough specks
    becomes the match, and its class is the one counted."""
    condition = bench.Condition(spacing_mm=0.2, film_blur_mm=0.05, added_blur_mm=0.0, bits=8, upsampling="lanczos")
    image = _image(bench, [0.9, 0.6], [[1], [1]], ["amorphous"], ["malignant"], ["benign", "malignant"], [0.3, 0.8])
    image.specks_in_cm2 = np.array([1, 4])
    assert bench.summarise(condition, [image], min_specks=0, threshold=0.5).lesion_accuracy == 0.0
    assert bench.summarise(condition, [image], min_specks=3, threshold=0.5).lesion_accuracy == 1.0


def test_marks_of_mismatched_shapes_are_refused(bench: Any) -> None:
    with pytest.raises(ValueError, match="labels has 1"):
        _image(bench, [0.9, 0.4], [[1], [0]], ["amorphous"], ["malignant"], ["malignant"], [0.8, 0.2])
    with pytest.raises(ValueError, match=r"hits is \(1, 2\)"):  # transposed
        bench.ImageMarks(
            scores=np.array([0.9, 0.4]),
            specks_in_cm2=np.array([5, 5]),
            hits=np.array([[True, False]]),
            edge_mm=np.array([10.0, 10.0]),
            seconds=1.0,
            morphologies=["amorphous"],
            categories=["malignant"],
            labels=["malignant", "benign"],
            p_malignant=np.array([0.8, 0.2]),
        )
    with pytest.raises(ValueError, match="categories"):
        _image(bench, [0.9], [[1]], ["amorphous"], ["cancer"], ["malignant"], [0.8])
    with pytest.raises(ValueError, match="places has 2"):
        image = _image(bench, [0.9], [[1]], ["amorphous"], ["malignant"], ["malignant"], [0.8])
        image.places = ["breast", "breast"]
        image.__post_init__()


def test_edge_margin_and_an_image_without_clusters(bench: Any) -> None:
    """A mark dropped by the edge margin neither finds its cluster nor gives it a class; an image
    with no inserted cluster contributes only its false marks."""
    condition = bench.Condition(spacing_mm=0.2, film_blur_mm=0.05, added_blur_mm=0.0, bits=8, upsampling="lanczos")
    near_edge = _image(bench, [0.9, 0.6], [[1], [1]], ["punctate"], ["benign"], ["malignant", "benign"], [0.9, 0.1])
    near_edge.edge_mm = np.array([1.0, 10.0])  # the 0.9 mark is 1 mm from the edge
    empty = _image(bench, [0.7], np.zeros((1, 0)), [], [], ["benign"], [0.2])
    result = bench.summarise(condition, [near_edge, empty], min_specks=0, threshold=0.5, edge_margin_mm=3.0)
    assert result.n_clusters == 1 and result.false_marks_per_image == pytest.approx(1 / 2)
    assert result.lesion_accuracy == 1.0  # matched by the kept 0.6 mark, called benign
    unfiltered = bench.summarise(condition, [near_edge, empty], min_specks=0, threshold=0.5)
    assert unfiltered.lesion_accuracy == 0.0  # the 0.9 mark, called malignant
    assert unfiltered.called_malignant_by_morphology == {"punctate": [1, 1]}


def test_no_images_is_refused(bench: Any) -> None:
    condition = bench.Condition(spacing_mm=0.2, film_blur_mm=0.05, added_blur_mm=0.0, bits=8, upsampling="lanczos")
    with pytest.raises(ValueError, match="no delivered image"):
        bench.summarise(condition, [], min_specks=0, threshold=0.5)


def test_a_refused_image_misses_its_clusters_and_is_counted(bench: Any) -> None:
    """An image the engine refuses (e.g. "no breast found" at a wrong stated spacing) has no marks:
    its clusters count as missed, as a batch reports and skips such an image."""
    condition = bench.Condition(spacing_mm=0.2, film_blur_mm=0.05, added_blur_mm=0.0, bits=8, upsampling="lanczos")
    found = _image(bench, [0.9], [[1]], ["amorphous"], ["malignant"], ["malignant"], [0.8])
    details = [{"morphology": "punctate", "category": "benign", "place": "breast"}] * 2
    refused = bench._refused(details, "no breast found", 0.5)
    assert refused.refused == "no breast found" and refused.hits.shape == (0, 2)
    result = bench.summarise(condition, [found, refused], min_specks=0, threshold=0.5)
    assert result.refused_images == 1 and result.n_clusters == 3
    assert result.sensitivity == pytest.approx(1 / 3) and result.sensitivity_any_mark == pytest.approx(1 / 3)
    assert result.found_by_morphology == {"amorphous": [1, 1], "punctate": [0, 2]}
    assert "Images the engine refused (no marks; their clusters missed): row 1: 1 of 2." in bench.markdown_table(
        [result], "test model"
    )


def test_image_level_aucs_use_the_risk_detect_reports_against_normals(bench: Any) -> None:
    """With ``--normals`` each row gets image AUCs of the image risk ``detect`` reports, the
    highest score * p_malignant at the threshold: a normal film's faint mark the detector calls
    malignant at p 0.99 outranks the benign cluster image but not the malignant one, where under
    the highest p_malignant it would outrank both.
    The detection-score AUC ranks the same images by their highest mark score, whatever its class
    and whether or not it reaches the threshold. The three rules give three different AUCs here."""
    condition = bench.Condition(spacing_mm=0.2, film_blur_mm=0.05, added_blur_mm=0.0, bits=8, upsampling="lanczos")
    malignant = _image(bench, [0.9], [[1]], ["amorphous"], ["malignant"], ["malignant"], [0.8])  # risk 0.72
    benign = _image(bench, [0.8], [[1]], ["punctate"], ["benign"], ["benign"], [0.3])  # risk 0.24
    faint = _image(bench, [0.55], np.zeros((1, 0)), [], [], ["malignant"], [0.99])  # risk 0.5445
    clean = _image(bench, [0.3], np.zeros((1, 0)), [], [], ["malignant"], [0.9])  # below the threshold: risk 0
    bright = _image(bench, [0.85], np.zeros((1, 0)), [], [], ["benign"], [0.4])  # risk 0.34
    result = bench.summarise(condition, [malignant, benign], 0, 0.5, normals=[faint, clean, bright])
    assert result.n_images == 2 and result.n_normal_images == 3
    # With clusters (0.72, 0.24) vs normal (0.5445, 0, 0.34): 4 of 6 pairs ordered.
    assert result.image_auc_vs_normal == pytest.approx(4 / 6)
    # Malignant (0.72) vs the rest (0.24, 0.5445, 0, 0.34): all ordered.
    assert result.image_auc_malignant == pytest.approx(1.0)
    assert result.image_risks == pytest.approx([0.72, 0.24, 0.5445, 0.0, 0.34])
    # Detection scores: with clusters (0.9, 0.8) vs normal (0.55, 0.3, 0.85): 5 of 6 pairs ordered
    # (the clean film's mark below the threshold counts too). The highest reported p_malignant
    # would give 3 of 6: (0.8, 0.3) vs (0.99, 0, 0.4).
    assert result.image_auc_detection_vs_normal == pytest.approx(5 / 6)
    assert result.false_marks_per_image == 0.0  # the normals' marks are not the row's false marks
    table = bench.markdown_table([result], "test model")
    assert "| 1 | 2 | 3 | 0.67 | 0.83 | 1.00 |" in table
    without = bench.summarise(condition, [malignant, benign], 0, 0.5)
    assert without.n_normal_images == 0 and np.isnan(without.image_auc_vs_normal)
    assert np.isnan(without.image_auc_detection_vs_normal)
    assert "Image level" not in bench.markdown_table([without], "test model")
