"""Risk roll-up: image -> breast (views of one side) -> exam (MicrocalcAI.core.findings.risk)."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from _findings_helpers import image_findings, lesion, model_spec, ood_check

from MicrocalcAI.core.errors import MicrocalcAIError
from MicrocalcAI.core.findings.risk import (
    INDETERMINATE,
    RiskOptionError,
    breast_findings,
    combine_probabilities,
    exam_findings,
    image_risk,
    is_indeterminate,
)

SPEC = model_spec([("routine", 0.0), ("follow-up", 0.3), ("biopsy", 0.7)])


def _lesion(id: int, p: float, score: float = 1.0):
    return dataclasses.replace(lesion(id, "malignant" if p >= 0.5 else "benign", p), score=score)


def test_image_risk_is_the_most_suspicious_lesion():
    lesions = [_lesion(1, 0.82, 0.9), _lesion(2, 0.1, 0.95), _lesion(3, 0.45, 0.5)]
    risk = image_risk(lesions, SPEC.risk_categories)
    assert risk.probability == pytest.approx(0.82 * 0.9) and risk.category == "biopsy"


def test_image_risk_weighs_malignancy_by_detection_confidence():
    """A faint mark the detector barely believes in (dust) cannot make an image high by
    itself, however malignant it looks: the product score * p_malignant decides."""
    dust = _lesion(1, 0.99, score=0.2)
    cluster = _lesion(2, 0.6, score=0.9)
    risk = image_risk([dust, cluster], SPEC.risk_categories)
    assert risk.probability == pytest.approx(0.54) and risk.category == "follow-up"
    assert image_risk([dust], SPEC.risk_categories).category == "routine"  # 0.198


def test_image_without_lesions_has_zero_probability_and_lowest_category():
    risk = image_risk([], SPEC.risk_categories)
    assert risk.probability == 0.0 and risk.category == "routine"


@pytest.mark.parametrize(
    "p, category",
    [(0.0, "routine"), (0.299, "routine"), (0.3, "follow-up"), (0.69, "follow-up"), (0.7, "biopsy"), (1.0, "biopsy")],
)
def test_categories_come_from_the_model_operating_points(p, category):
    assert image_risk([_lesion(1, p)], SPEC.risk_categories).category == category
    # Another model with other operating points categorises the same lesion differently.
    other = model_spec([("low", 0.0), ("high", 0.05)])
    assert image_risk([_lesion(1, p)], other.risk_categories).category == ("high" if p >= 0.05 else "low")


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


# --------------------------------------------------------------------------- indeterminate


def test_flagged_image_is_indeterminate_and_keeps_its_probability():
    lesions = [_lesion(1, 0.95, 0.9)]
    flagged = image_risk(lesions, SPEC.risk_categories, ood_check(flagged=True))
    assert flagged.category == INDETERMINATE and flagged.probability == pytest.approx(0.855)
    assert image_risk([], SPEC.risk_categories, ood_check(flagged=True)).category == INDETERMINATE
    # A check that passed, or no check at all (a model without OOD reference), changes nothing.
    assert image_risk(lesions, SPEC.risk_categories, ood_check(flagged=False)).category == "biopsy"
    assert image_risk(lesions, SPEC.risk_categories, None).category == "biopsy"


def _breast(p_cc, p_mlo, *, cc_ood=False, mlo_ood=False, side="L", study="S1"):
    def one(view, p, flagged):
        return image_findings(
            f"{study}_{side}{view}", study=study, laterality=side, view=view, p=p, spec=SPEC,
            ood=ood_check(flagged=flagged),
        )  # fmt: skip

    return [one("CC", p_cc, cc_ood), one("MLO", p_mlo, mlo_ood)]


def test_readable_views_are_not_indeterminate():
    (breast,) = breast_findings(_breast(0.2, 0.4), SPEC.risk_categories)
    assert (breast.risk.probability, breast.risk.category, breast.indeterminate_images) == (0.4, "follow-up", [])


def test_breast_with_an_indeterminate_view_is_indeterminate():
    """The readable CC says routine, but the unreadable MLO might show what the CC misses."""
    images = _breast(0.1, 0.9, mlo_ood=True)
    assert [is_indeterminate(i) for i in images] == [False, True]
    (breast,) = breast_findings(images, SPEC.risk_categories)
    assert breast.risk.category == INDETERMINATE
    assert breast.risk.probability == 0.9  # the rule over all views is still reported
    assert breast.indeterminate_images == ["S1_LMLO"]
    # Not rescued by an intermediate readable view either: only the highest category is.
    (breast,) = breast_findings(_breast(0.5, 0.1, mlo_ood=True), SPEC.risk_categories)
    assert breast.risk.category == INDETERMINATE


def test_confident_positive_is_not_hidden_by_an_unreadable_view():
    (breast,) = breast_findings(_breast(0.8, 0.1, mlo_ood=True), SPEC.risk_categories)
    assert (breast.risk.probability, breast.risk.category) == (0.8, "biopsy")
    assert breast.indeterminate_images == ["S1_LMLO"]  # listed even when the category is decided


def test_breast_with_only_indeterminate_views_is_indeterminate():
    (breast,) = breast_findings(_breast(0.9, 0.95, cc_ood=True, mlo_ood=True), SPEC.risk_categories)
    assert breast.risk.category == INDETERMINATE and breast.indeterminate_images == ["S1_LCC", "S1_LMLO"]


def test_noisy_or_decides_the_readable_views_category_the_same_way():
    # Readable CC 0.5 and MLO 0.5 -> noisy-OR 0.75 reaches "biopsy"; max (0.5) would not.
    images = [*_breast(0.5, 0.5), image_findings("S1_LXCCL", study="S1", view="XCCL", p=0.0, spec=SPEC,
                                                 ood=ood_check())]  # fmt: skip
    (noisy,) = breast_findings(images, SPEC.risk_categories, combine="noisy_or")
    assert noisy.risk.category == "biopsy" and noisy.risk.probability == pytest.approx(0.75)
    (maximum,) = breast_findings(images, SPEC.risk_categories, combine="max")
    assert maximum.risk.category == INDETERMINATE


def test_category_alone_marks_an_image_indeterminate():
    """Findings read back from an SR may carry the category without the check."""
    image = image_findings("a", p=0.3, spec=SPEC)
    image.risk = dataclasses.replace(image.risk, category=INDETERMINATE)
    assert is_indeterminate(image)
    (breast,) = breast_findings([image], SPEC.risk_categories)
    assert breast.risk.category == INDETERMINATE and breast.indeterminate_images == ["a"]


def test_exam_rests_on_indeterminate_breasts_like_a_breast_on_its_views():
    left_unsure = _breast(0.1, 0.2, mlo_ood=True, side="L")
    right_low = _breast(0.1, 0.05, side="R")
    right_high = _breast(0.75, 0.3, side="R")
    (exam,) = exam_findings(breast_findings(left_unsure + right_low, SPEC.risk_categories), SPEC.risk_categories)
    assert (exam.risk.probability, exam.risk.category) == (0.2, INDETERMINATE)
    assert exam.indeterminate_images == ["S1_LMLO"]
    (exam,) = exam_findings(breast_findings(left_unsure + right_high, SPEC.risk_categories), SPEC.risk_categories)
    assert (exam.risk.probability, exam.risk.category) == (0.75, "biopsy")
    assert exam.indeterminate_images == ["S1_LMLO"]
    # A breast made "biopsy" by its readable view despite an unreadable one is a readable breast.
    both = _breast(0.8, 0.1, mlo_ood=True, side="L") + right_low
    (exam,) = exam_findings(breast_findings(both, SPEC.risk_categories), SPEC.risk_categories)
    assert exam.risk.category == "biopsy" and exam.indeterminate_images == ["S1_LMLO"]
