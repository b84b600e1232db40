"""Hard-negative mining (MicrocalcAI.training.mining, ``microcalcai mine-negatives``): the bundled
default model's own false marks on the bundled sample, written where training aims its patches."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from MicrocalcAI.cli import main
from MicrocalcAI.core.boxes import box_iou, hit_matrix
from MicrocalcAI.core.detect.manifest import resolve_model
from MicrocalcAI.core.detect.run import detect
from MicrocalcAI.core.detect.weights import load_detector
from MicrocalcAI.datasets.coco import parse_coco
from MicrocalcAI.training.config import TrainConfigError
from MicrocalcAI.training.data import CocoMammogramDataset, standardise_file
from MicrocalcAI.training.mining import MINED_TYPE, MiningConfig, false_marks, mine_false_marks

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "Resources" / "Samples" / "sim_R_CC.dcm"
TRUTH = json.loads((REPO / "Resources" / "Samples" / "sim_R_CC_truth.json").read_text())
CLASS_IDS = {"benign": 1, "malignant": 2}


def _sample_coco(folder: Path, extra_files: tuple[str, ...] = ()) -> Path:
    """A COCO file beside a copy of the sample, with relative file names; ``extra_files`` are
    further image entries (lesion-free) named relative to the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE, folder / SAMPLE.name)
    anns = []
    for i, les in enumerate(TRUTH["lesions"]):
        x0, y0, x1, y1 = les["box_px"]
        anns.append(
            {"id": i + 1, "image_id": 1, "category_id": CLASS_IDS[les["class"]], "bbox": [x0, y0, x1 - x0, y1 - y0]}
        )
    images = [
        {
            "id": 1,
            "file_name": SAMPLE.name,
            "spacing_mm": 0.1,
            "hard_negatives": [{"type": "skin_marker", "bbox": [900, 1100, 20, 20]}],
        }
    ]
    images += [{"id": 2 + k, "file_name": name} for k, name in enumerate(extra_files)]
    coco = folder / "annotations.json"
    coco.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": 1, "name": "benign"}, {"id": 2, "name": "malignant"}],
            }
        )
    )
    return coco


def _by_rows(boxes: np.ndarray) -> np.ndarray:
    """Boxes in one order (by x0, then y0, ...), whole rows kept together."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    return boxes[np.lexsort(boxes.T[::-1])]


def _free_of(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Which marks find no lesion and touch none, by the hit rule and IoU, independently of
    the module's own rule."""
    return ~hit_matrix(boxes, gt).any(axis=1) & ~(box_iou(boxes, gt) > 0).any(axis=1)


@pytest.fixture(scope="module")
def default_model():
    spec = resolve_model(None)
    return spec, load_detector(spec, "cpu")


@pytest.fixture(scope="module")
def sample_marks(default_model) -> tuple[np.ndarray, np.ndarray]:
    """Every mark of the default model on the sample at score >= 0.2, in stored pixels."""
    spec, model = default_model
    canonical = standardise_file(
        SAMPLE,
        spacing_mm=spec.spacing_mm,
        assumed_input_spacing_mm=spec.assumed_input_spacing_mm,
        noise_equalisation=spec.noise_equalisation,
    )
    dets = detect(canonical, model, spec, device="cpu", score_threshold=0.2)
    boxes = canonical.transform.to_stored_boxes(np.array([d.box for d in dets]).reshape(-1, 4))
    return boxes, np.array([d.score for d in dets])


def test_false_marks_keeps_confident_marks_away_from_every_lesion_highest_first():
    gt = np.array([[100.0, 100.0, 140.0, 140.0]])
    det = np.array(
        [
            [105.0, 105.0, 135.0, 135.0],  # finds the lesion
            [135.0, 135.0, 175.0, 175.0],  # misses it (centre outside, IoU < 0.1) but touches it
            [300.0, 300.0, 320.0, 320.0],  # false, 0.5
            [400.0, 400.0, 420.0, 420.0],  # false, 0.9
            [500.0, 500.0, 520.0, 520.0],  # false but under min_score
        ]
    )
    scores = np.array([0.95, 0.8, 0.5, 0.9, 0.1])
    assert list(false_marks(det, scores, gt, MiningConfig(min_score=0.2))) == [3, 2]
    assert list(false_marks(det, scores, gt, MiningConfig(min_score=0.2, max_per_image=1))) == [3]
    assert list(false_marks(det, scores, np.zeros((0, 4)), MiningConfig(min_score=0.2))) == [0, 3, 1, 2]
    with pytest.raises(TrainConfigError, match="min_score"):
        MiningConfig(min_score=0.0)
    with pytest.raises(TrainConfigError, match="max_per_image"):
        MiningConfig(max_per_image=0)


def test_mined_marks_are_the_models_false_marks_and_training_aims_at_them(tmp_path, default_model, sample_marks):
    spec, model = default_model
    coco = _sample_coco(tmp_path / "data")
    before = hashlib.sha256(coco.read_bytes()).hexdigest()
    out = tmp_path / "elsewhere" / "mined.json"

    result = mine_false_marks(coco, out, spec, model, "cpu", MiningConfig(min_score=0.2))

    assert hashlib.sha256(coco.read_bytes()).hexdigest() == before  # the input is never modified
    entry = parse_coco(out)[0]  # loads from another folder: the file name was rewritten for it
    assert entry.path.resolve() == (tmp_path / "data" / SAMPLE.name).resolve()
    assert len(entry.labels) == len(TRUTH["lesions"])  # the lesions are kept as they were
    assert entry.hard_negative_types[0] == "skin_marker"  # so are the recorded hard negatives
    mined = entry.hard_negatives_stored[np.array(entry.hard_negative_types) == MINED_TYPE]
    gt = np.array([les["box_px"] for les in TRUTH["lesions"]], dtype=float)

    # The mined boxes are exactly the model's marks that find no lesion and touch none.
    boxes, scores = sample_marks
    free = _free_of(boxes, gt)
    assert free.sum() >= 1, "the sample holds at least one mark away from its clusters"
    assert result.n_mined == len(mined) == int(free.sum()) == result.per_image[1]
    assert np.allclose(_by_rows(mined), _by_rows(boxes[free]), atol=0.002)
    assert not hit_matrix(mined, gt).any()
    info = json.loads(out.read_text())["info"]["hard_negative_mining"]
    assert info["n_mined"] == result.n_mined and info["model"] == f"{spec.name} {spec.version}"

    # Training reads every one of them as a hard negative its patches are aimed at.
    sample = CocoMammogramDataset(
        out, spacing_mm=spec.spacing_mm, assumed_input_spacing_mm=spec.assumed_input_spacing_mm
    )[0]
    assert len(sample.hard_negatives) == 1 + len(mined)


def test_max_per_image_keeps_the_highest_scoring_false_mark(tmp_path, default_model, sample_marks):
    spec, model = default_model
    coco = _sample_coco(tmp_path)
    out = tmp_path / "mined.json"
    mine_false_marks(coco, out, spec, model, "cpu", MiningConfig(min_score=0.2, max_per_image=1))
    entry = parse_coco(out)[0]
    mined = entry.hard_negatives_stored[np.array(entry.hard_negative_types) == MINED_TYPE]
    boxes, scores = sample_marks
    gt = np.array([les["box_px"] for les in TRUTH["lesions"]], dtype=float)
    free = np.flatnonzero(_free_of(boxes, gt))
    best = free[np.argmax(scores[free])]
    assert len(mined) == 1 and np.allclose(mined[0], boxes[best], atol=0.002)
    recorded = json.loads(out.read_text())["images"][0]["hard_negatives"][-1]
    assert recorded["score"] == pytest.approx(scores[best], abs=1e-4)


def test_cli_reports_and_keeps_a_bad_image_and_mines_the_rest(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "broken.dcm").write_bytes(b"not a DICOM file at all")
    coco = _sample_coco(folder, extra_files=("broken.dcm",))
    out = tmp_path / "mined.json"

    code = main(["mine-negatives", str(coco), "--out", str(out), "--device", "cpu", "--quiet"])

    assert code == 1  # some inputs failed, the rest were written
    captured = capsys.readouterr()
    assert "broken.dcm" in captured.err and "false marks" in captured.out
    images = {e["id"]: e for e in json.loads(out.read_text())["images"]}
    assert "hard_negatives" not in images[2]  # kept, unchanged but for its path from the new file
    assert images[2]["file_name"] == "data/broken.dcm"
    assert any(h["type"] == MINED_TYPE for h in images[1]["hard_negatives"])

    assert main(["mine-negatives", str(coco), "--out", str(coco), "--quiet"]) == 2  # never over its input
    assert "input" in capsys.readouterr().err
