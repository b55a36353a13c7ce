"""`flexunet evaluate --predictions`: mask files scored against an independent numpy computation
(no keras; a model's evaluation is in test_evaluate.py)."""

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import flexunet, read_csv
from PIL import Image

from flexunet_k3.config import Config
from flexunet_k3.evaluation import Scorer, pair_masks, score_masks

SQUARE = np.zeros((16, 16), bool)
SQUARE[2:6, 2:6] = True
# (truth, prediction) per slice: overlap, both empty, a false positive; a miss, a perfect hit.
SLICES = {
    "A_1.png": (SQUARE, np.roll(SQUARE, 1, axis=(0, 1))),
    "A_2.png": (np.zeros((16, 16), bool), np.zeros((16, 16), bool)),
    "A_3.png": (np.zeros((16, 16), bool), np.roll(SQUARE, 8, axis=0)),
    "B_1.png": (SQUARE, np.zeros((16, 16), bool)),
    "B_2.png": (np.roll(SQUARE, 5, axis=1), np.roll(SQUARE, 5, axis=1)),
}


def dice(truth: np.ndarray, predicted: np.ndarray) -> float:
    return 2 * (truth & predicted).sum() / (truth.sum() + predicted.sum())


def test_scores_of_mask_files_match_numpy(tmp_path):
    for name, (truth, predicted) in SLICES.items():
        for folder, mask in (("truth", truth), ("predicted", predicted)):
            (tmp_path / folder).mkdir(exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / folder / name)
    done = flexunet("evaluate", "--predictions", str(tmp_path / "predicted"),
                    "--masks", str(tmp_path / "truth"))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "predicted" / "evaluation"
    summary = json.loads((out / "evaluation.json").read_text())
    tumor = summary["classes"]["tumor"]

    expected_cases = {}
    for case in "AB":
        truth = np.stack([t for n, (t, _) in SLICES.items() if n.startswith(case)])
        predicted = np.stack([p for n, (_, p) in SLICES.items() if n.startswith(case)])
        expected_cases[case] = dice(truth, predicted)
    rows = read_csv(out / "evaluation_per_case.csv")
    per_case = {row["case"]: float(row["dice"]) for row in rows}
    assert per_case == pytest.approx(expected_cases)
    assert tumor["per_case"]["dice"] == pytest.approx(np.mean(list(expected_cases.values())))

    not_both_empty = [dice(t, p) for t, p in SLICES.values() if t.any() or p.any()]
    assert tumor["per_image"]["dice"] == pytest.approx(np.mean(not_both_empty))
    assert (tumor["per_image"]["counted"], tumor["per_image"]["both_empty"]) == (4, 1)
    assert tumor["per_image"]["empty_truth_predicted"] == 1

    one_hot = [(np.eye(2)[t.astype(int)], np.eye(2)[p.astype(int)]) for t, p in SLICES.values()]
    original = [(2 * (t * p).sum() + 1) / (t.sum() + p.sum() + 1) for t, p in one_hot]
    assert summary["dice_coef_multiclass"] == pytest.approx(np.mean(original))
    assert (out / "evaluation.csv").read_text().startswith("dice_coef_multiclass,")
    assert summary["loss"] is None


def test_class_id_masks_are_warned_about_not_scored_silently(tmp_path):
    for folder, scale in (("truth", 255), ("predicted", 1)):  # predicted: 0/1 class ids
        (tmp_path / folder).mkdir()
        for name, (truth, _) in SLICES.items():
            Image.fromarray(truth.astype(np.uint8) * scale).save(tmp_path / folder / name)
    done = flexunet("evaluate", "--predictions", str(tmp_path / "predicted"),
                    "--masks", str(tmp_path / "truth"))
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    pixels = sum(int(truth.sum()) for truth, _ in SLICES.values())
    masks = sum(truth.any() for truth, _ in SLICES.values())
    assert len(warned) == 1, done.stderr
    assert f"{tmp_path / 'predicted'}: {pixels} pixels in {masks} masks are not" in warned[0]
    with warnings.catch_warnings():  # class colors: no warning
        warnings.simplefilter("error")
        score_masks(pair_masks(tmp_path / "truth", tmp_path / "truth"), Config().data.classes)


def test_npz_predictions_of_class_ids_are_scored(tmp_path):
    for folder in ("truth", "predicted"):
        (tmp_path / folder).mkdir()
    for name, (truth, predicted) in SLICES.items():
        Image.fromarray(truth.astype(np.uint8) * 255).save(tmp_path / "truth" / name)
        np.savez(tmp_path / "predicted" / Path(name).with_suffix(".npz"), labels=predicted)
    pairs = pair_masks(tmp_path / "predicted", tmp_path / "truth")
    report = score_masks(pairs, Config().data.classes)
    expected = [dice(t, p) for t, p in SLICES.values() if t.any() or p.any()]
    assert report.summary["classes"]["tumor"]["per_image"]["dice"] == pytest.approx(
        np.mean(expected)
    )


def test_real_ct_masks_against_themselves_score_1():
    folder = os.environ.get("FLEXUNET_REAL_CT")
    if not folder:
        pytest.skip("FLEXUNET_REAL_CT is not set (a folder with images/ and masks/ of real CT)")
    masks = Path(folder) / "masks"
    report = score_masks(pair_masks(masks, masks), Config().data.classes)
    assert len(report.per_case) == len({row["case"] for row in report.per_image}) > 1
    assert all(row["dice"] == 1.0 and row["iou"] == 1.0 for row in report.per_case)
    assert report.summary["classes"]["tumor"]["per_case"]["dice"] == 1.0


def test_one_case_or_image_is_counted_in_the_singular():
    from flexunet_k3.evaluation import TITLES, summary_rows

    stats = {"counted": 1, "both_empty": 0, "empty_truth_predicted": 0,
             **{key: 0.5 for key in TITLES}}
    summary = {"classes": {"tumor": {"per_case": stats, "per_image": stats}}, "loss": None,
               "dice_coef_multiclass": 0.9}
    assert [row[2] for row in summary_rows(summary) if row[2]][:2] == ["1 case", "1 image"]


def test_rows_go_image_by_image_in_a_batch():
    scorer = Scorer(["background", "organ", "tumor"])
    truth = np.zeros((2, 4, 4), np.uint8)
    scorer.add(["a_1.png", "a_2.png"], truth, np.eye(3, dtype=np.float32)[truth])
    rows = [(row["image"], row["class"]) for row in scorer.report().per_image]
    assert rows == [("a_1.png", "organ"), ("a_1.png", "tumor"),
                    ("a_2.png", "organ"), ("a_2.png", "tumor")]


def test_a_name_starting_with_an_underscore_is_a_case_of_its_own():
    scorer = Scorer(["background", "tumor"])
    truth = np.ones((3, 4, 4), np.uint8)
    scorer.add(["_x_1.png", "_y_1.png", "a_1.png"], truth, np.eye(2, dtype=np.float32)[truth])
    assert [row["case"] for row in scorer.report().per_case] == ["_x_1", "_y_1", "a"]


def test_a_report_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from flexunet_k3 import evaluation

    scorer = Scorer(["background", "tumor"])
    truth = np.zeros((1, 4, 4), np.uint8)
    scorer.add(["a_1.png"], truth, np.eye(2, dtype=np.float32)[truth])
    evaluation.write_report(scorer.report(), tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    def fail(rows):
        raise OSError("disk full")

    monkeypatch.setattr(evaluation, "csv_text", fail)  # after evaluation.csv and .json
    with pytest.raises(OSError, match="disk full"):
        evaluation.write_report(scorer.report(), tmp_path)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
