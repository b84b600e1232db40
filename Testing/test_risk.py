"""Risk roll-up: image -> breast (views of one side) -> exam (MicrocalcAI.core.findings.risk)."""

from __future__ import annotations

import logging

import pytest
from _findings_helpers import image_findings, lesion, model_spec

from MicrocalcAI.core.errors import MicrocalcAIError
from MicrocalcAI.core.findings.risk import (
    RiskOptionError,
    breast_findings,
    combine_probabilities,
    exam_findings,
    image_risk,
)

SPEC = model_spec([("routine", 0.0), ("follow-up", 0.3), ("biopsy", 0.7)])


def test_image_risk_is_the_most_suspicious_lesion():
    lesions = [lesion(1, "malignant", 0.82), lesion(2, "benign", 0.1), lesion(3, "malignant", 0.45)]
    risk = image_risk(lesions, SPEC.risk_categories)
    assert risk.probability == 0.82 and risk.category == "biopsy"


def test_image_without_lesions_has_zero_probability_and_lowest_category():
    risk = image_risk([], SPEC.risk_categories)
    assert risk.probability == 0.0 and risk.category == "routine"


@pytest.mark.parametrize(
    "p, category",
    [(0.0, "routine"), (0.299, "routine"), (0.3, "follow-up"), (0.69, "follow-up"), (0.7, "biopsy"), (1.0, "biopsy")],
)
def test_categories_come_from_the_model_operating_points(p, category):
    assert image_risk([lesion(1, "benign", p)], SPEC.risk_categories).category == category
    # Another model with other operating points categorises the same lesion differently.
    other = model_spec([("low", 0.0), ("high", 0.05)])
    assert image_risk([lesion(1, "benign", p)], other.risk_categories).category == ("high" if p >= 0.05 else "low")


def _two_studies():
    """Patient P1, studies S1 and S2, both sides, CC + MLO each; and patient P2 in S3."""
    probs = {("S1", "L"): (0.2, 0.6), ("S1", "R"): (0.1, 0.05), ("S2", "L"): (0.0, 0.35), ("S2", "R"): (0.9, 0.8)}
    images = []
    for (study, side), (p_cc, p_mlo) in probs.items():
        for view, p in (("CC", p_cc), ("MLO", p_mlo)):
            images.append(
                image_findings(f"{study}_{side}{view}", study=study, laterality=side, view=view, p=p, spec=SPEC)
            )
    images.append(image_findings("P2_RCC", patient="P2", study="S3", laterality="R", view="CC", p=0.4, spec=SPEC))
    return images


def test_breasts_group_views_of_one_side_of_one_study():
    breasts = breast_findings(_two_studies(), SPEC.risk_categories)
    summary = [
        (b.patient_id, b.study_uid, b.laterality, b.image_names, b.views, b.risk.probability, b.risk.category)
        for b in breasts
    ]
    assert summary == [
        ("P1", "S1", "L", ["S1_LCC", "S1_LMLO"], ["CC", "MLO"], 0.6, "follow-up"),
        ("P1", "S1", "R", ["S1_RCC", "S1_RMLO"], ["CC", "MLO"], 0.1, "routine"),
        ("P1", "S2", "L", ["S2_LCC", "S2_LMLO"], ["CC", "MLO"], 0.35, "follow-up"),
        ("P1", "S2", "R", ["S2_RCC", "S2_RMLO"], ["CC", "MLO"], 0.9, "biopsy"),
        ("P2", "S3", "R", ["P2_RCC"], ["CC"], 0.4, "follow-up"),
    ]
    assert all(b.warnings == [] for b in breasts)


def test_noisy_or_combination_treats_views_as_independent():
    breasts = breast_findings(_two_studies(), SPEC.risk_categories, combine="noisy_or")
    assert breasts[0].risk.probability == pytest.approx(1 - 0.8 * 0.4)
    assert breasts[3].risk.probability == pytest.approx(1 - 0.1 * 0.2)
    assert breasts[0].risk.category == "follow-up" and breasts[1].risk.category == "routine"
    assert combine_probabilities([], "noisy_or") == 0.0


def test_unknown_combine_method_is_a_user_error():
    with pytest.raises(RiskOptionError) as info:
        breast_findings(_two_studies(), SPEC.risk_categories, combine="mean")
    assert isinstance(info.value, MicrocalcAIError)


def test_exams_take_the_highest_breast():
    exams = exam_findings(breast_findings(_two_studies(), SPEC.risk_categories), SPEC.risk_categories)
    summary = [
        (e.patient_id, e.study_uid, [b.laterality for b in e.breasts], e.risk.probability, e.risk.category)
        for e in exams
    ]
    assert summary == [
        ("P1", "S1", ["L", "R"], 0.6, "follow-up"),
        ("P1", "S2", ["L", "R"], 0.9, "biopsy"),
        ("P2", "S3", ["R"], 0.4, "follow-up"),
    ]


def test_missing_study_uid_groups_by_patient_with_a_warning():
    images = [
        image_findings("a", patient="P1", study=None, laterality="L", view="CC", p=0.3),
        image_findings("b", patient="P1", study=None, laterality="L", view="MLO", p=0.7),
        image_findings("c", patient="P2", study=None, laterality="L", view="CC", p=0.1),
    ]
    breasts = breast_findings(images, SPEC.risk_categories)
    assert [(b.patient_id, b.image_names, b.risk.probability) for b in breasts] == [
        ("P1", ["a", "b"], 0.7),
        ("P2", ["c"], 0.1),
    ]
    assert all(any("study UID" in w for w in b.warnings) for b in breasts)
    exams = exam_findings(breasts, SPEC.risk_categories)
    assert [(e.patient_id, e.risk.probability) for e in exams] == [("P1", 0.7), ("P2", 0.1)]


def test_images_without_patient_and_study_stand_alone():
    images = [
        image_findings(n, patient=None, study=None, laterality="L", view="CC", p=p) for n, p in (("x", 0.2), ("y", 0.8))
    ]
    breasts = breast_findings(images, SPEC.risk_categories)
    assert [b.image_names for b in breasts] == [["x"], ["y"]]
    exams = exam_findings(breasts, SPEC.risk_categories)
    assert [(len(e.breasts), e.risk.probability) for e in exams] == [(1, 0.2), (1, 0.8)]


def test_unknown_laterality_is_its_own_breast_with_a_warning(caplog):
    images = [
        image_findings("lcc", laterality="L", view="CC", p=0.2),
        image_findings("unknown1", laterality=None, view="CC", p=0.9),
        image_findings("unknown2", laterality="B", view="MLO", p=0.1),
        image_findings("lmlo", laterality="L", view="MLO", p=0.3),
    ]
    with caplog.at_level(logging.WARNING, logger="MicrocalcAI.core.findings.risk"):
        breasts = breast_findings(images, SPEC.risk_categories)
    assert [b.image_names for b in breasts] == [["lcc", "lmlo"], ["unknown1"], ["unknown2"]]
    assert [b.laterality for b in breasts] == ["L", None, None]
    assert breasts[0].warnings == [] and all("laterality unknown" in b.warnings[0] for b in breasts[1:])
    assert sum("laterality unknown" in r.getMessage() for r in caplog.records) == 2
    # Still part of its study: the exam risk sees the unknown-side image.
    exams = exam_findings(breasts, SPEC.risk_categories)
    assert len(exams) == 1 and exams[0].risk.probability == 0.9 and exams[0].risk.category == "biopsy"


def test_lowercase_laterality_is_accepted():
    images = [image_findings("a", laterality="l", p=0.2), image_findings("b", laterality="L", view="MLO", p=0.4)]
    breasts = breast_findings(images, SPEC.risk_categories)
    assert len(breasts) == 1 and breasts[0].laterality == "L" and breasts[0].risk.probability == 0.4
