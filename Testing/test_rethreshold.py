"""Re-thresholding finished findings without the model (MicrocalcAI.core.findings.threshold)."""

from __future__ import annotations

import pytest
from _findings_helpers import image_findings, lesion, model_spec, ood_check
from hypothesis import given
from hypothesis import strategies as st

from MicrocalcAI.core.errors import InputError
from MicrocalcAI.core.findings.threshold import rethreshold

SPEC = model_spec([("routine", 0.0), ("follow-up", 0.3), ("biopsy", 0.7)])


def _findings():
    # Scores are 0.5 + p/3: L1 0.8, L2 0.6, L3 0.7; made at threshold 0.3.
    lesions = [lesion(1, "malignant", 0.9), lesion(2, "benign", 0.3), lesion(3, "malignant", 0.6)]
    return image_findings("R_CC", lesions=lesions, spec=SPEC)


def test_drops_lesions_below_the_threshold_renumbers_and_recomputes_risk():
    f = _findings()
    shown = rethreshold(f, 0.65, SPEC.risk_categories)
    assert [(les.id, les.label, les.p_malignant) for les in shown.lesions] == [
        (1, "malignant", 0.9),
        (2, "malignant", 0.6),
    ]
    assert shown.score_threshold == 0.65
    assert (shown.risk.probability, shown.risk.category) == (pytest.approx(0.8 * 0.9), "biopsy")
    none = rethreshold(f, 0.85, SPEC.risk_categories)
    assert none.lesions == [] and (none.risk.probability, none.risk.category) == (0.0, "routine")


def test_risk_uses_the_categories_given_not_the_stored_ones():
    f = _findings()
    shown = rethreshold(f, 0.65, model_spec([("low", 0.0), ("high", 0.95)]).risk_categories)
    assert shown.risk.category == "low"


def test_input_is_not_modified():
    f = _findings()
    rethreshold(f, 0.75, SPEC.risk_categories)
    assert (
        [les.id for les in f.lesions] == [1, 2, 3]
        and f.score_threshold == 0.3
        and f.risk.probability == pytest.approx(0.72)
    )


def test_a_lower_threshold_cannot_bring_back_lesions_never_reported():
    f = _findings()
    for t in (None, 0.0, 0.1, 0.3):
        shown = rethreshold(f, t, SPEC.risk_categories)
        assert shown.score_threshold == 0.3 and [les.id for les in shown.lesions] == [1, 2, 3]


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_threshold_outside_0_1_is_refused(bad):
    with pytest.raises(InputError):
        rethreshold(_findings(), bad, SPEC.risk_categories)


@given(a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0))
def test_rethresholding_twice_is_rethresholding_once_at_the_higher_threshold(a, b):
    f = _findings()
    twice = rethreshold(rethreshold(f, a, SPEC.risk_categories), b, SPEC.risk_categories)
    once = rethreshold(f, max(a, b), SPEC.risk_categories)
    assert [(les.id, les.score) for les in twice.lesions] == [(les.id, les.score) for les in once.lesions]
    assert twice.risk == once.risk and twice.score_threshold == once.score_threshold


@pytest.mark.parametrize("threshold", [None, 0.65, 0.85])
def test_an_image_unlike_the_training_data_stays_indeterminate_at_every_threshold(threshold):
    lesions = [lesion(1, "malignant", 0.9), lesion(2, "benign", 0.3)]
    f = image_findings("R_CC", lesions=lesions, spec=SPEC, ood=ood_check(flagged=True))
    shown = rethreshold(f, threshold, SPEC.risk_categories)
    assert shown.risk.category == "indeterminate" and shown.ood is f.ood
    assert shown.risk.probability == pytest.approx(0.72 if threshold != 0.85 else 0.0)
    passed = image_findings("R_CC", lesions=lesions, spec=SPEC, ood=ood_check(flagged=False))
    assert rethreshold(passed, threshold, SPEC.risk_categories).risk.category != "indeterminate"
