"""Tests of the evaluation suite (MicrocalcAI.evaluation.evaluate).

Most tests build ground truth and findings by hand so the right answer is known by
construction; one runs the real pipeline end to end on a tiny simulated dataset.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from _findings_helpers import image_findings, lesion
from _train_helpers import simulate_tiny

from MicrocalcAI.core.detect.manifest import ModelSpec, RiskCategory, resolve_model
from MicrocalcAI.core.errors import MicrocalcAIError
from MicrocalcAI.core.findings.risk import image_risk
from MicrocalcAI.core.records import ImageFindings, Lesion
from MicrocalcAI.evaluation.curves import FROC_RATES, froc_sensitivities, roc_auc, roc_curve
from MicrocalcAI.evaluation.evaluate import EvaluationReport, evaluate_dataset, write_report
from MicrocalcAI.evaluation.matching import ImageTruth, group_breasts, truth_from_coco
from MicrocalcAI.evaluation.metrics import DETECTOR_CLASS, compute_metrics
from MicrocalcAI.evaluation.plots import plot_roc

B, M = 1, 2
GT_BOX = (100.0, 100.0, 140.0, 140.0)  # every hand-built image has its lesions here or at FAR
FAR = (400.0, 400.0, 420.0, 420.0)


def spec(score_threshold: float = 0.3) -> ModelSpec:
    return ModelSpec(
        name="eval-test",
        version="1",
        file="w.safetensors",
        sha256="cd" * 32,
        backbone="mobilenet_v2",
        score_threshold=score_threshold,
        operating_points={"high_sensitivity": 0.3, "balanced": 0.5},
        risk_categories=[RiskCategory("low", 0.0), RiskCategory("intermediate", 0.3), RiskCategory("high", 0.5)],
    )


def les(box: Sequence[float], score: float, p: float, label: Optional[str] = None) -> Lesion:
    """A reported lesion at ``box`` with this detector score and p_malignant (class from p)."""
    label = label or ("malignant" if p >= 0.5 else "benign")
    one_speck = np.ones((1, 1), dtype=bool)  # evaluation reads boxes and scores, not specks
    return replace(lesion(1, label, p, tuple(float(v) for v in box), mask=one_speck), score=score)


def finding(
    name: str,
    lesions: list[Lesion],
    threshold: float = 0.1,
    *,
    patient: Optional[str] = None,
    study: Optional[str] = None,
    lat: Optional[str] = None,
    view: Optional[str] = None,
) -> ImageFindings:
    """Findings holding ``lesions`` down to score ``threshold``; identity only where given."""
    f = image_findings(name, patient=patient, study=study, laterality=lat, view=view, lesions=lesions)
    return replace(f, source=None, score_threshold=threshold)


def truth(name: str, boxes: Sequence[Sequence[float]], labels: Sequence[int], **ident) -> ImageTruth:
    return ImageTruth(name=name, boxes=np.asarray(boxes, dtype=float).reshape(-1, 4), labels=labels, **ident)


def test_missed_malignant_lesion_counts_as_false_negative_not_dropped():
    t = [truth("a", [GT_BOX], [M]), truth("b", [GT_BOX], [M]), truth("c", [GT_BOX], [B])]
    f = [finding("a", [les(GT_BOX, 0.9, 0.9)]), finding("b", []), finding("c", [les(GT_BOX, 0.8, 0.1)])]
    m = compute_metrics(t, f, spec=spec(), n_bootstrap=0)
    cls = m["lesion_level"]["classification"][DETECTOR_CLASS]
    assert (cls["tp"], cls["fn"], cls["tn"], cls["fp"]) == (1, 1, 1, 0)
    assert cls["sensitivity"] == 0.5  # the miss lowers sensitivity
    assert cls["specificity"] == 1.0
    assert cls["accuracy"] == pytest.approx(2 / 3)
    assert cls["strict_accuracy"] == pytest.approx(2 / 3)
    assert cls["matched_only"]["sensitivity"] == 1.0 and cls["matched_only"]["n"] == 2  # the paper code's view
    assert m["lesion_level"]["confusion_3way"]["malignant"] == {"missed": 1, "benign": 0, "malignant": 1}
    assert m["detection"]["malignant_sensitivity"] == 0.5
    # the same at image level: image b is malignant with risk 0 -> false negative
    img = m["image_level"]["classification"]["balanced"]
    assert (img["tp"], img["fn"], img["tn"], img["fp"]) == (1, 1, 1, 0)
    # a lesion found only below the operating threshold is missed at the operating point
    f2 = [finding("a", [les(GT_BOX, 0.9, 0.9)]), finding("b", [les(GT_BOX, 0.2, 0.9)]), f[2]]
    m2 = compute_metrics(t, f2, spec=spec(0.3), n_bootstrap=0)
    assert m2["lesion_level"]["classification"][DETECTOR_CLASS]["fn"] == 1
    assert m2["detection"]["froc"]["curve"]["sensitivity"][0] == 1.0  # but the sweep at 0.1 finds it


def test_image_that_could_not_be_analysed_counts_as_nothing_detected():
    t = [truth("a", [GT_BOX], [M]), truth("b", [GT_BOX, FAR], [M, B])]
    m = compute_metrics(t, [finding("a", [les(GT_BOX, 0.9, 0.9)]), None], spec=spec(), n_bootstrap=0)
    assert m["n_images_not_analysed"] == 1 and m["images_not_analysed"] == ["b"]
    assert m["lesion_level"]["n_lesions"] == 3
    assert m["detection"]["lesions_missed"] == 2
    assert m["lesion_level"]["classification"][DETECTOR_CLASS]["sensitivity"] == 0.5
    assert any("without findings" in w for w in m["warnings"])


def _froc_case() -> tuple[list[ImageTruth], list[ImageFindings]]:
    """4 images, one lesion each, found at scores 0.9, 0.7, 0.4 and never; FPs 0.8 0.6 0.5 0.3 0.2."""
    t = [truth(f"i{k}", [GT_BOX], [M if k % 2 else B]) for k in range(4)]
    f = [
        finding("i0", [les(GT_BOX, 0.9, 0.2), les(FAR, 0.8, 0.6)]),
        finding("i1", [les(GT_BOX, 0.7, 0.8), les((0, 0, 5, 5), 0.6, 0.3), les((0, 500, 5, 505), 0.2, 0.9)]),
        finding("i2", [les(GT_BOX, 0.4, 0.1), les(FAR, 0.5, 0.5)]),
        finding("i3", [les(FAR, 0.3, 0.7)]),
    ]
    return t, f


def test_froc_is_exact_and_monotone_on_a_constructed_case():
    t, f = _froc_case()
    m = compute_metrics(t, f, spec=spec(0.45), n_bootstrap=0)
    froc = m["detection"]["froc"]
    expected = {"0.125": 0.25, "0.25": 0.5, "0.5": 0.5, "1": 0.75, "2": 0.75, "4": 0.75, "8": 0.75}
    assert froc["sensitivity_at_fp_per_image"] == expected
    assert [float(k) for k in froc["sensitivity_at_fp_per_image"]] == list(FROC_RATES)
    values = list(froc["sensitivity_at_fp_per_image"].values())
    assert values == sorted(values)
    # the curve: sensitivity and FP/image never increase with the threshold
    curve = froc["curve"]
    assert np.all(np.diff(curve["threshold"]) > 0)
    assert np.all(np.diff(curve["fp_per_image"]) <= 0) and np.all(np.diff(curve["sensitivity"]) <= 0)
    assert curve["fp_per_image"][0] == 5 / 4 and curve["sensitivity"][0] == 0.75
    # operating point 0.45: lesions at 0.9 and 0.7 found, FPs 0.8, 0.6, 0.5 -> 3 FP on 4 images
    det = m["detection"]
    assert det["lesions_found"] == 2 and det["false_positives"] == 3 and det["fp_per_image"] == 0.75
    assert det["false_malignant_marks_per_image"] == 0.5  # 0.8 (p 0.6) and 0.5 (p 0.5)
    # the helper shared with training gives the same numbers
    pts = froc_sensitivities(np.array([0.9, 0.7, 0.4, -np.inf]), np.array([0.8, 0.6, 0.5, 0.3, 0.2]), 4, min_score=0.1)
    assert [pts[r] for r in FROC_RATES] == list(expected.values())


def test_auc_equals_hand_computed_value():
    # matched lesions: malignant p 0.9, 0.6; benign p 0.7, 0.2 -> 3 of 4 pairs ordered -> 0.75
    ps, labels = [0.9, 0.6, 0.7, 0.2], [M, M, B, B]
    t = [truth(f"i{k}", [GT_BOX], [lab]) for k, lab in enumerate(labels)]
    f = [finding(f"i{k}", [les(GT_BOX, 0.9, p)]) for k, p in enumerate(ps)]
    m = compute_metrics(t, f, spec=spec(), n_bootstrap=0)
    assert m["lesion_level"]["auc_benign_vs_malignant_matched"]["auc"] == 0.75
    assert m["image_level"]["auc"]["auc"] == 0.75
    assert roc_auc(np.array(ps), np.array(labels) == M) == 0.75
    fpr, tpr, _ = roc_curve(np.array(ps), np.array(labels) == M)
    assert float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) == pytest.approx(0.75)  # trapezoid area
    # a missed lesion is not part of the matched-lesion AUC, but its image scores 0 at image level
    f[0] = finding("i0", [])
    m = compute_metrics(t, f, spec=spec(), n_bootstrap=0)
    assert m["lesion_level"]["auc_benign_vs_malignant_matched"]["auc"] == 0.5  # 0.6 vs 0.7, 0.2
    assert m["image_level"]["auc"]["auc"] == 0.25  # 0.0 and 0.6 vs 0.7 and 0.2: 1 of 4 pairs ordered


def test_bootstrap_ci_contains_the_estimate_and_is_deterministic():
    rng = np.random.default_rng(5)
    t, f = [], []
    for k in range(40):
        mal = bool(k % 2)
        p = float(np.clip(rng.normal(0.65 if mal else 0.35, 0.2), 0.01, 0.99))
        t.append(truth(f"i{k}", [GT_BOX], [M if mal else B]))
        f.append(finding(f"i{k}", [les(GT_BOX, 0.9, p)]))
    a = compute_metrics(t, f, spec=spec(), n_bootstrap=300, seed=7)
    b = compute_metrics(t, f, spec=spec(), n_bootstrap=300, seed=7)
    c = compute_metrics(t, f, spec=spec(), n_bootstrap=300, seed=8)
    assert a == b
    for block in (
        a["lesion_level"]["auc_benign_vs_malignant_matched"],
        a["image_level"]["auc"],
        a["breast_level"]["auc"],
    ):
        lo, hi = block["auc_ci95"]
        assert lo <= block["auc"] <= hi and hi - lo > 0.02
        assert block["n_bootstrap_valid"] == 300
    cls = a["lesion_level"]["classification"]["balanced"]
    assert cls["sensitivity_ci95"][0] <= cls["sensitivity"] <= cls["sensitivity_ci95"][1]
    assert c["image_level"]["auc"]["auc_ci95"] != a["image_level"]["auc"]["auc_ci95"]
    assert c["image_level"]["auc"]["auc"] == a["image_level"]["auc"]["auc"]


def test_breast_level_combines_cc_and_mlo():
    # Patient P1 right breast: the malignant lesion is missed on CC but found on MLO.
    ident = {"patient_id": "P1", "study_uid": "S1"}
    t = [
        truth("P1_R_CC", [GT_BOX], [M], laterality="R", view="CC", **ident),
        truth("P1_R_MLO", [GT_BOX], [M], laterality="R", view="MLO", **ident),
        truth("P1_L_CC", [], [], laterality="L", view="CC", **ident),
        truth("P1_L_MLO", [GT_BOX], [B], laterality="L", view="MLO", **ident),
        truth("P2_R_CC", [], [], patient_id="P2"),  # side from the file, below
        truth("P2_R_MLO", [], [], patient_id="P2"),
        truth("lonely", [GT_BOX], [M]),  # no identity: a breast of its own
    ]
    f = [
        finding("P1_R_CC", []),
        finding("P1_R_MLO", [les(GT_BOX, 0.9, 0.95)]),
        finding("P1_L_CC", [les(FAR, 0.5, 0.2)]),
        finding("P1_L_MLO", [les(GT_BOX, 0.8, 0.1)]),
        finding("P2_R_CC", [les(FAR, 0.9, 0.7)], lat="R", view="CC", study="S2"),
        finding("P2_R_MLO", [], lat="R", view="MLO", study="S2"),
        finding("lonely", [les(GT_BOX, 0.9, 0.4)]),
    ]
    assert group_breasts(t, f) == [[0, 1], [2, 3], [4, 5], [6]]
    m = compute_metrics(t, f, spec=spec(), n_bootstrap=0)
    bl = m["breast_level"]
    # Lesion vs none by the highest detection score, a breast's being the highest of its
    # images': P1 R 0.9 (+), P1 L 0.8 (+: its lesion is benign), P2 R 0.9 (-), lonely 0.9 (+).
    assert (bl["detection_auc"]["n_positive"], bl["detection_auc"]["n_negative"]) == (3, 1)
    assert bl["detection_auc"]["auc"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    # Images: + (0, 0.9, 0.8, 0.9) vs - (0.5, 0.9, 0): 7.5 of 12 pairs ordered.
    assert m["image_level"]["detection_auc"]["auc"] == pytest.approx(7.5 / 12)
    assert bl["n_breasts"] == 4 and bl["n_with_two_or_more_views"] == 3 and bl["n_positive"] == 2
    bal = bl["classification"]["balanced"]
    # "balanced" cuts the breast's highest reported p_malignant at 0.5: P1 R positive (0.95) TP;
    # P1 L negative (0.2) TN; P2 R negative (0.7) FP; lonely positive (0.4) FN. (Its risks,
    # highest score * p_malignant, 0.855 / 0.1 / 0.63 / 0.36, make the same calls at 0.5.)
    assert (bal["tp"], bal["fn"], bal["tn"], bal["fp"]) == (1, 1, 1, 1)
    img = m["image_level"]["classification"]["balanced"]
    # images: P1_R_CC FN (missed on this view), P1_R_MLO TP, P1_L_* TN, P2_R_CC FP, P2_R_MLO TN, lonely FN
    assert (img["tp"], img["fn"], img["tn"], img["fp"]) == (1, 2, 3, 1)
    assert bl["auc"]["auc"] == 0.75  # positives 0.855, 0.36; negatives 0.1, 0.63
    assert [r["breast"] for r in m["images"]] == [0, 0, 1, 1, 2, 2, 3]


def test_image_score_is_the_risk_detect_reports():
    """evaluate's image score is the product's image risk at the operating threshold (the
    highest score * p_malignant, core.findings.risk), not the highest p_malignant: a faint
    mark the detector barely believes in cannot make an image positive here either. Risk
    boundaries cut that risk (a lesion: its own score * p_malignant); operating points cut
    p_malignant."""
    t = [
        truth("faint", [], []),
        truth("sure", [GT_BOX], [M]),
        truth("none", [GT_BOX], [M]),
        truth("weak", [GT_BOX], [M]),
    ]
    f = [
        finding("faint", [les(FAR, 0.35, 0.99)]),  # reported (>= 0.3) but barely believed
        finding("sure", [les(GT_BOX, 0.9, 0.8), les(FAR, 0.2, 1.0)]),  # the 0.2 mark is below the threshold
        finding("none", []),
        finding("weak", [les(GT_BOX, 0.4, 0.9)]),  # found, p_malignant 0.9, risk 0.36
    ]
    m = compute_metrics(t, f, spec=spec(), n_bootstrap=0)
    reported = [[les for les in x.lesions if les.score >= m["score_threshold"]] for x in f]
    expected = [image_risk(r, spec().risk_categories).probability for r in reported]
    assert [r["probability"] for r in m["images"]] == pytest.approx(expected)
    assert expected == pytest.approx([0.35 * 0.99, 0.9 * 0.8, 0.0, 0.4 * 0.9])
    # A risk category is a cut on that risk: at "high" (0.5) "faint" (0.35) is no false
    # positive, and "weak" (0.36) is not called.
    img = m["image_level"]["classification"]["risk_category>=high"]
    assert (img["tp"], img["fn"], img["tn"], img["fp"]) == (1, 2, 1, 0)
    # An operating point is a cut on a lesion's p_malignant: at "balanced" (0.5) the faint mark's
    # p_malignant 0.99 reaches it, so "faint" is a false positive there, and "weak" is called.
    op = m["image_level"]["classification"]["balanced"]
    assert (op["tp"], op["fn"], op["tn"], op["fp"]) == (2, 1, 0, 1)
    assert op["rule"] != img["rule"]
    assert m["image_level"]["auc"]["auc"] == pytest.approx(2 / 3)  # positives 0.72, 0, 0.36; negative 0.3465
    # Lesion level, the same two kinds of cut on each found lesion.
    # Breast level (no identities: each image a breast of its own), the same two kinds of cut.
    br_high = m["breast_level"]["classification"]["risk_category>=high"]
    br_bal = m["breast_level"]["classification"]["balanced"]
    assert (br_high["tp"], br_high["fn"], br_high["tn"], br_high["fp"]) == (1, 2, 1, 0)
    assert (br_bal["tp"], br_bal["fn"], br_bal["tn"], br_bal["fp"]) == (2, 1, 0, 1)
    les_high = m["lesion_level"]["classification"]["risk_category>=high"]
    les_bal = m["lesion_level"]["classification"]["balanced"]
    assert (les_high["tp"], les_high["fn"]) == (1, 2)  # "weak" (0.36) under the boundary
    assert (les_bal["tp"], les_bal["fn"]) == (2, 1)


def test_lesion_vs_none_auc_scores_images_by_their_highest_detection():
    """Beside the risk's AUC (malignant vs the rest), evaluate reports the image AUC of "holds a
    lesion of any class" vs "holds none", scored by the highest detection score (reported or
    not): the risk would rank a found benign cluster (0.6 * 0.4 = 0.24) below a normal image's
    faint mark called malignant (0.35 * 0.99), the detection score does not."""
    t = [
        truth("normal_faint", [], []),
        truth("benign_found", [GT_BOX], [B]),
        truth("normal_low", [], []),
        truth("malignant_missed", [GT_BOX], [M]),
        truth("malignant_found", [GT_BOX], [M]),
    ]
    f = [
        finding("normal_faint", [les(FAR, 0.35, 0.99)]),
        finding("benign_found", [les(GT_BOX, 0.6, 0.4)]),
        finding("normal_low", [les(FAR, 0.2, 0.9)]),  # below the threshold (0.3): no risk, but a score
        finding("malignant_missed", []),
        finding("malignant_found", [les(GT_BOX, 0.9, 0.8)]),
    ]
    m = compute_metrics(t, f, spec=spec(), n_bootstrap=50)
    assert [r["detection_score"] for r in m["images"]] == pytest.approx([0.35, 0.6, 0.2, 0.0, 0.9])
    assert [r["probability"] for r in m["images"]] == pytest.approx([0.3465, 0.24, 0.0, 0.0, 0.72])
    det = m["image_level"]["detection_auc"]
    assert (det["n_positive"], det["n_negative"]) == (3, 2)
    # + (0.6, 0, 0.9) vs - (0.35, 0.2): 4 of 6 pairs ordered; the miss ranks last.
    assert det["auc"] == pytest.approx(4 / 6)
    assert det["auc_ci95"] is not None and det["auc_ci95"][0] <= det["auc_ci95"][1]
    # Each image is a breast of its own here, so the breast level agrees.
    assert m["breast_level"]["detection_auc"]["auc"] == pytest.approx(4 / 6)
    # The risk's AUC is still malignant vs the rest: + (0, 0.72) vs - (0.3465, 0.24, 0).
    assert m["image_level"]["auc"]["auc"] == pytest.approx((0.5 + 3) / 6)
    summary = EvaluationReport(dataset="hand-built", model={"name": "eval-test"}, metrics=m).summary()
    assert "lesion vs none AUC 0.667" in summary and "AUC 0.583" in summary

    # An image not analysed scores 0 (nothing detected, as everywhere in evaluate); a findings
    # file written at a higher floor (0.25) sets the floor for all, so no image is scored from a
    # mark below it (normal_low's 0.2), as the FROC sweep does.
    t2 = [*t, truth("not_analysed", [], [])]
    f2 = [*f[:4], replace(f[4], score_threshold=0.25), None]
    m2 = compute_metrics(t2, f2, spec=spec(), n_bootstrap=0)
    assert [r["detection_score"] for r in m2["images"]] == pytest.approx([0.35, 0.6, 0.0, 0.0, 0.9, 0.0])
    # + (0.6, 0, 0.9) vs - (0.35, 0, 0): 0.6 and 0.9 beat all three; the miss ties two.
    assert m2["image_level"]["detection_auc"]["auc"] == pytest.approx((3 + 1 + 3) / 9)

    # All images holding a lesion: the AUC is undefined, reported as such, not as a number.
    m3 = compute_metrics(t[1:2] + t[4:], f[1:2] + f[4:], spec=spec(), n_bootstrap=0)
    assert m3["image_level"]["detection_auc"]["auc"] is None
    assert "lesion vs none AUC n/a" in EvaluationReport("x", {"name": "eval-test"}, m3).summary()

    # A metrics.json of the same schema written before the field existed still reads and plots.
    older = json.loads(json.dumps(m))
    for level in ("image_level", "breast_level"):
        del older[level]["detection_auc"]
    assert "lesion vs none AUC n/a" in EvaluationReport("x", {"name": "eval-test"}, older).summary()
    assert plot_roc(older).startswith(b"\x89PNG")


def test_operating_point_and_threshold_handling():
    t, f = _froc_case()
    m = compute_metrics(t, f, spec=spec(0.05), n_bootstrap=0)  # below what the findings hold (0.1)
    assert m["score_threshold"] == 0.1 and any("raised" in w for w in m["warnings"])
    names = set(m["image_level"]["classification"])
    assert names == {
        DETECTOR_CLASS,
        "high_sensitivity",
        "balanced",
        "risk_category>=intermediate",
        "risk_category>=high",
    }
    with pytest.raises(MicrocalcAIError, match="4 ground-truth images but 2 findings"):
        compute_metrics(t, f[:2], spec=spec())


def test_calibration_bins():
    t = [truth(f"i{k}", [GT_BOX], [M if k < 3 else B]) for k in range(4)]
    f = [finding(f"i{k}", [les(GT_BOX, 0.9, p)]) for k, p in enumerate([0.95, 0.92, 0.15, 0.12])]
    cal = compute_metrics(t, f, spec=spec(), n_bootstrap=0)["lesion_level"]["calibration_p_malignant_matched"]
    by_bin = {round(b["lower"], 1): b for b in cal["bins"] if b["n"]}
    assert by_bin[0.9]["n"] == 2 and by_bin[0.9]["observed_rate"] == 1.0
    assert by_bin[0.1]["n"] == 2 and by_bin[0.1]["observed_rate"] == 0.5
    assert by_bin[0.1]["mean_predicted"] == pytest.approx(0.135)
    assert cal["ece"] == pytest.approx(0.5 * (1 - 0.935) + 0.5 * (0.5 - 0.135))
    assert cal["brier"] == pytest.approx(np.mean([0.05**2, 0.08**2, 0.85**2, 0.12**2]))


def test_calibration_before_and_after_are_reported_by_inverting_the_models_calibration():
    from MicrocalcAI.core.detect.calibration import Calibration

    cal = Calibration(temperature=2.0, score_a=0.5, score_b=-np.log(3.0))
    # findings hold calibrated values: p 0.75 / 0.25 came from raw 0.9 / 0.1, score 0.5 from raw 0.9
    t = [truth(f"i{k}", [GT_BOX], [M if k < 2 else B]) for k in range(4)]
    f = [finding(f"i{k}", [les(GT_BOX, 0.5, p), les(FAR, 0.5, 0.75)]) for k, p in enumerate([0.75, 0.75, 0.25, 0.75])]
    m = compute_metrics(t, f, spec=replace(spec(), calibration=cal), n_bootstrap=0)["calibration"]
    assert m["model_calibration"] == cal.to_json()
    p_raw, p_cal = m["p_malignant_matched"]["raw"], m["p_malignant_matched"]["calibrated"]
    assert p_raw["n"] == p_cal["n"] == 4
    # raw: 0.9, 0.9, 0.1, 0.9 for truth M, M, B, B
    assert p_raw["brier"] == pytest.approx(np.mean([0.1**2, 0.1**2, 0.1**2, 0.9**2]))
    assert p_cal["brier"] == pytest.approx(np.mean([0.25**2, 0.25**2, 0.25**2, 0.75**2]))
    assert {round(b["lower"], 1) for b in p_raw["bins"] if b["n"]} == {0.1, 0.9}
    assert {round(b["lower"], 1) for b in p_cal["bins"] if b["n"]} == {0.2, 0.7}
    s_raw, s_cal = m["lesion_score"]["raw"], m["lesion_score"]["calibrated"]
    assert s_raw["n"] == s_cal["n"] == 8 and m["lesion_score"]["n_true"] == 4
    assert s_raw["ece"] == pytest.approx(0.4) and s_cal["ece"] == pytest.approx(0.0)  # half the marks are true
    # a model without calibration: both sides are the same numbers, and the report says so
    plain = compute_metrics(t, f, spec=spec(), n_bootstrap=0)["calibration"]
    assert plain["model_calibration"] is None
    assert plain["lesion_score"]["raw"] == plain["lesion_score"]["calibrated"]
    report = EvaluationReport(
        dataset="hand-built",
        model={"name": "eval-test"},
        metrics=compute_metrics(t, f, spec=replace(spec(), calibration=cal), n_bootstrap=0),
    )
    assert "calibration (raw -> calibrated ECE): p_malignant" in report.summary()


def _png_ok(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_write_report_writes_json_and_plots(tmp_path):
    t, f = _froc_case()
    metrics = compute_metrics(t, f, spec=spec(), n_bootstrap=50)
    report = EvaluationReport(dataset="hand-built", model={"name": "eval-test"}, metrics=metrics)
    files = write_report(report, tmp_path / "out")
    assert sorted(p.name for p in files) == ["calibration.png", "froc.png", "metrics.json", "roc.png"]
    for p in files[1:]:
        assert _png_ok(p), p
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["detection"]["froc"]["sensitivity_at_fp_per_image"]["1"] == 0.75
    assert not list((tmp_path / "out").glob(".*.tmp"))
    assert "lesion (malignant, missed = negative)" in report.summary()


def test_evaluate_dataset_end_to_end_on_simulated_images(tmp_path):
    coco = simulate_tiny(tmp_path / "sim", n_images=4, seed=3003)
    seen = []
    report = evaluate_dataset(
        coco, tmp_path / "eval", device="cpu", n_bootstrap=50, progress=lambda fr, msg: seen.append(fr)
    )
    m = report.metrics
    gt = truth_from_coco(coco)
    assert m["n_images"] == 4 and m["n_images_not_analysed"] == 0
    assert m["lesion_level"]["n_lesions"] == sum(len(x.labels) for x in gt) >= 4
    assert m["score_threshold"] == pytest.approx(report_spec_threshold())
    # the sweep starts at the merge floor on the model's (calibrated) score scale
    assert m["detection"]["froc"]["min_score"] == pytest.approx(resolve_model(None).reporting_floor)
    # the simulator writes one exam of 4 views: R CC, L CC, R MLO, L MLO -> two breasts of two views
    assert m["breast_level"]["n_breasts"] == 2 and m["breast_level"]["n_with_two_or_more_views"] == 2
    assert seen and seen[-1] == 1.0 and all(np.diff(seen) >= 0)
    for name in ("metrics.json", "roc.png", "froc.png", "calibration.png"):
        assert (tmp_path / "eval" / name).is_file()
    assert _png_ok(tmp_path / "eval" / "froc.png")
    assert len(list((tmp_path / "eval" / "findings").glob("*.json"))) == 4
    # the bundled default model finds most simulated clusters (it was trained on this simulator)
    assert m["detection"]["lesion_sensitivity"] >= 0.5
    # reusing the per-image findings gives the same numbers without running the model
    again = evaluate_dataset(coco, tmp_path / "eval2", findings_dir=tmp_path / "eval" / "findings", n_bootstrap=50)
    assert again.findings_source.endswith("findings")
    for key in ("detection", "lesion_level", "image_level", "breast_level", "calibration"):
        assert again.metrics[key] == m[key]
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert doc["calibration"]["p_malignant_matched"]["calibrated"]["n"] == m["lesion_level"]["n_matched"]


def report_spec_threshold() -> float:
    from MicrocalcAI.core.detect.manifest import resolve_model

    return resolve_model(None).score_threshold


def test_marks_on_hard_negatives_are_counted_per_type(tmp_path):
    """A mark on a skin marker counts; a mark elsewhere or below the threshold does not."""
    t = truth("a", [[10, 10, 30, 30]], [2])
    t.hard_negatives = [("marker", (100.0, 100.0, 120.0, 120.0)), ("scratch", (200.0, 10.0, 260.0, 14.0))]
    f = finding(
        "a", [les([12, 12, 28, 28], 0.9, 0.9), les([102, 102, 118, 118], 0.8, 0.7), les([205, 9, 250, 15], 0.2, 0.1)]
    )
    m = compute_metrics([t], [f], spec=spec(0.3), n_bootstrap=10)
    hard = m["detection"]["hard_negatives"]
    assert hard["n"] == 2 and hard["marked"] == 1
    assert hard["by_type"] == {"marker": {"n": 1, "marked": 1}, "scratch": {"n": 1, "marked": 0}}
    coco = {
        "images": [
            {
                "id": 1,
                "file_name": "a.png",
                "width": 300,
                "height": 300,
                "hard_negatives": [{"type": "marker", "bbox": [100, 100, 20, 20]}],
            }
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "benign"}, {"id": 2, "name": "malignant"}],
    }
    from PIL import Image

    Image.fromarray(np.zeros((300, 300), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "c.json").write_text(json.dumps(coco))
    (read,) = truth_from_coco(tmp_path / "c.json")
    assert read.hard_negatives == [("marker", (100.0, 100.0, 120.0, 120.0))]


def test_sensitivity_is_broken_down_by_morphology_and_distribution(tmp_path):
    img = tmp_path / "a.dcm"
    img.write_bytes(b"placeholder")
    coco = tmp_path / "c.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.dcm"}, {"id": 2, "file_name": "a.dcm"}],
                "annotations": [
                    {
                        "id": 1,
                        "image_id": 1,
                        "category_id": 2,
                        "bbox": [100, 100, 40, 40],
                        "morphology": "amorphous",
                        "distribution": "grouped",
                    },
                    {
                        "id": 2,
                        "image_id": 1,
                        "category_id": 1,
                        "bbox": [400, 400, 20, 20],
                        "morphology": "punctate",
                        "distribution": "grouped",
                    },
                    {
                        "id": 3,
                        "image_id": 2,
                        "category_id": 2,
                        "bbox": [100, 100, 40, 40],
                        "morphology": "amorphous",
                        "distribution": "segmental",
                    },
                ],
                "categories": [{"id": 1, "name": "benign"}, {"id": 2, "name": "malignant"}],
            }
        )
    )
    t = truth_from_coco(coco)
    assert t[0].descriptors == [
        {"morphology": "amorphous", "distribution": "grouped"},
        {"morphology": "punctate", "distribution": "grouped"},
    ]
    # Image 1: the amorphous lesion found (p 0.8), the punctate one missed; image 2: found (p 0.6).
    f = [finding(t[0].name, [les(GT_BOX, 0.9, 0.8)]), finding(t[1].name, [les(GT_BOX, 0.7, 0.6)])]
    by = compute_metrics(t, f, spec=spec(), n_bootstrap=0)["detection"]["by_descriptor"]
    assert by["morphology"]["amorphous"] == {
        "n": 2,
        "malignant": 2,
        "sensitivity": 1.0,
        "mean_p_malignant_found": pytest.approx(0.7),
    }
    assert by["morphology"]["punctate"] == {"n": 1, "malignant": 0, "sensitivity": 0.0, "mean_p_malignant_found": None}
    assert by["distribution"]["grouped"]["sensitivity"] == 0.5 and by["distribution"]["segmental"]["n"] == 1
    # Data without descriptors gets an empty breakdown, not an error.
    plain = compute_metrics([truth("x", [GT_BOX], [M])], [finding("x", [])], spec=spec(), n_bootstrap=0)
    assert plain["detection"]["by_descriptor"] == {}


def _random_case(seed: int, n_images: int = 14) -> tuple[list[ImageTruth], list[ImageFindings], list]:
    """The same GT and detections as evaluation inputs and as training-validation inputs."""
    from MicrocalcAI.evaluation.curves import EVAL_MIN_SCORE
    from MicrocalcAI.training.validation import ImageEvaluation

    rng = np.random.default_rng(seed)
    t, f, evals = [], [], []
    for k in range(n_images):
        n_gt = int(rng.integers(0, 3))
        gt = [(100.0 + 150 * g, 100.0, 140.0 + 150 * g, 140.0) for g in range(n_gt)]
        labels = [int(rng.choice([B, M])) for _ in range(n_gt)]
        dets = []
        for box, lab in zip(gt, labels):
            if rng.random() < 0.8:  # found, with a class-dependent p_malignant
                shift = float(rng.integers(-8, 9))
                p = float(np.clip(rng.normal(0.7 if lab == M else 0.3, 0.2), 0.01, 0.99))
                dets.append(((box[0] + shift, box[1], box[2] + shift, box[3]), float(rng.uniform(0.05, 1)), p))
        for _ in range(int(rng.integers(0, 3))):  # false positives
            x = float(rng.uniform(0, 60))
            dets.append(((x, 400.0, x + 20, 420.0), float(rng.uniform(0.05, 1)), float(rng.uniform(0, 1))))
        lesions = [les(box, s, p) for box, s, p in dets]
        t.append(truth(f"i{k}", gt, labels))
        f.append(finding(f"i{k}", lesions, threshold=EVAL_MIN_SCORE))
        evals.append(
            ImageEvaluation(
                f"i{k}",
                np.asarray(gt, dtype=float).reshape(-1, 4),
                np.asarray(labels, dtype=np.int64),
                np.asarray([d[0] for d in dets], dtype=float).reshape(-1, 4),
                np.asarray([d[1] for d in dets], dtype=float),
                np.asarray([d[2] for d in dets], dtype=float),
                [x.label for x in lesions],
            )
        )
    return t, f, evals


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_training_validation_reports_the_numbers_of_evaluate(seed):
    """One metrics path: training's summary equals `microcalcai evaluate`'s numbers, same detections."""
    from MicrocalcAI.training.validation import summarise

    t, f, evals = _random_case(seed)
    threshold = 0.4
    full = compute_metrics(t, f, spec=spec(threshold), n_bootstrap=0)
    summary = summarise(evals, threshold)
    det = full["detection"]
    for key in ("lesion_sensitivity", "malignant_sensitivity", "benign_sensitivity", "false_positives", "fp_per_image"):
        assert summary[key] == det[key], key
    assert summary["lesion_auc_benign_vs_malignant"] == full["lesion_level"]["auc_benign_vs_malignant_matched"]["auc"]
    assert summary["image_auc_malignant"] == full["image_level"]["auc"]["auc"]
    froc = det["froc"]["sensitivity_at_fp_per_image"]
    assert [summary[f"sensitivity_at_{r}_fp"] for r in froc] == list(froc.values())
    assert [float(r) for r in froc] == list(FROC_RATES)
    assert summary["n_lesions"] == full["lesion_level"]["n_lesions"] > 0


def test_roc_points_and_auc_match_a_hand_computed_case():
    """scikit-learn's ROC/AUC pinned against values worked out by hand, ties included."""
    # malignant p 0.9, 0.6; benign 0.7, 0.2: thresholds inf, 0.9, 0.7, 0.6, 0.2
    fpr, tpr, thr = roc_curve(np.array([0.9, 0.6, 0.7, 0.2]), np.array([True, True, False, False]))
    assert thr.tolist() == [np.inf, 0.9, 0.7, 0.6, 0.2]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    # a positive-negative tie counts half: (0.8>0.5) + (0.8>0.3) + (0.5=0.5: 1/2) + (0.5>0.3) = 3.5 of 4 pairs
    assert roc_auc(np.array([0.8, 0.5, 0.5, 0.3]), np.array([True, True, False, False])) == 0.875
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.3]), np.array([True, False, False, False])) == pytest.approx(4 / 6)
    fpr, tpr, _ = roc_curve(np.array([0.4, 0.3]), np.array([True, True]))  # no negatives: fpr undefined
    assert tpr.tolist() == [0.0, 0.5, 1.0] and fpr[0] == 0.0 and np.isnan(fpr[1:]).all()
    assert np.isnan(roc_auc(np.array([0.4, 0.3]), np.array([True, True])))


def test_cluster_bootstrap_interval_equals_scipy_percentile_bootstrap():
    """Our percentile interval is scipy.stats.bootstrap's on the same draws (cases with no undefined resample)."""
    from scipy.stats import bootstrap

    from MicrocalcAI.evaluation.metrics import bootstrap_indices, percentile_ci

    values = np.random.default_rng(4).normal(size=25)
    n_boot, seed, stream = 400, 11, 1
    ours = percentile_ci(values[bootstrap_indices(len(values), n_boot, seed, stream)].mean(axis=1))
    ref = bootstrap(
        (values,),
        np.mean,
        n_resamples=n_boot,
        method="percentile",
        confidence_level=0.95,
        rng=np.random.default_rng([seed, stream]),
    )
    assert ours == pytest.approx([ref.confidence_interval.low, ref.confidence_interval.high], abs=1e-12)
