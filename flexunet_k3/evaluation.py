"""Evaluation (README, "Metrics"): the original's evaluation.csv and honest foreground scores.

Scores come from `flexunet_k3.scores`: per image and per case (a case is the file-name part
before the first underscore; its slices are stacked, so pixel counts are summed over them before
Dice and IoU are computed). Background is excluded; images (or cases) where ground truth and
prediction are both empty for a class are counted apart, not averaged in as 1.0.
"""

from __future__ import annotations

import csv
import io
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexunet_k3 import scores
from flexunet_k3.data.cases import case_of, warn_shared_cases
from flexunet_k3.data.images import MASK_SUFFIXES, files_in, pair_files
from flexunet_k3.data.masks import read_mask, read_pair, warn_off_color
from flexunet_k3.errors import UserError, plural
from flexunet_k3.files import staged, write_json, write_text
from flexunet_k3.progress import track

COUNTS = ("true_pixels", "pred_pixels", "intersection")
SCORES = ("dice", "iou", "precision", "recall")
TITLES = {"dice": "Dice", "iou": "IoU", "precision": "precision", "recall": "recall"}


def _ce_dice(y_true, y_pred) -> float:
    return scores.crossentropy(y_true, y_pred) + scores.soft_dice_loss(y_true, y_pred)


LOSSES = {
    "categorical_crossentropy": scores.crossentropy,
    "dice": scores.soft_dice_loss,
    "ce_dice": _ce_dice,
}


@dataclass
class Report:
    """Rows per (image, class) and per (case, class), and the summary (evaluation.json)."""

    per_image: list[dict]
    per_case: list[dict]
    summary: dict


class Scorer:
    """Collects pixel counts per image and class, and the original's batch-mean metrics.

    `loss` names the training loss to report (as Keras' evaluate would: batch means weighted by
    batch size); None for hard masks, where only the counts and dice_coef_multiclass mean much.
    """

    def __init__(self, class_names: Sequence[str], loss: str | None = None):
        self.class_names = list(class_names)
        self.loss = loss
        self.rows: list[dict] = []
        self.images = 0
        self.sums = {"loss": 0.0, "dice_coef_multiclass": 0.0}

    def add(self, names: Sequence[str], truth: np.ndarray, probabilities: np.ndarray) -> None:
        """Score a batch: integer labels (B, H, W) against probabilities (B, H, W, C)."""
        predicted = scores.predicted_labels(probabilities)
        counts = {class_id: scores.pixel_counts(truth, predicted, class_id)
                  for class_id in range(1, len(self.class_names))}
        for row, name in enumerate(names):
            for class_id, of_class in counts.items():
                self.rows.append({
                    "image": name, "case": case_of(name), "class": self.class_names[class_id],
                    **{key: int(of_class[key][row]) for key in COUNTS},
                })
        weight = len(names)
        self.images += weight
        self.sums["dice_coef_multiclass"] += weight * scores.dice_coef_multiclass(
            truth, probabilities
        )
        if self.loss is not None:
            self.sums["loss"] += weight * LOSSES[self.loss](truth, probabilities)

    def report(self) -> Report:
        if not self.images:
            raise UserError("nothing to evaluate: no images were scored")
        per_image = [_scored(row) for row in self.rows]
        per_case = [_scored(row) for row in _sum_by_case(self.rows)]
        summary = {
            "images": self.images,
            "cases": len({row["case"] for row in self.rows}),
            "loss": None,
            "dice_coef_multiclass": self.sums["dice_coef_multiclass"] / self.images,
            "classes": {
                name: {"per_case": _means(per_case, name), "per_image": _means(per_image, name)}
                for name in self.class_names[1:]
            },
        }
        if self.loss is not None:
            summary["loss"] = {"name": self.loss, "value": self.sums["loss"] / self.images}
        return Report(per_image, per_case, summary)


def _sum_by_case(rows: list[dict]) -> list[dict]:
    """One row per (case, class) with the pixel counts summed over the case's slices."""
    cases: dict[tuple[str, str], dict] = {}
    for row in rows:
        case = cases.setdefault(
            (row["case"], row["class"]),
            {"case": row["case"], "class": row["class"], "images": 0, **dict.fromkeys(COUNTS, 0)},
        )
        case["images"] += 1
        for key in COUNTS:
            case[key] += row[key]
    return list(cases.values())


def _scored(row: dict) -> dict:
    values = scores.scores_from_counts(*(row[key] for key in COUNTS))
    return {**row, **{key: float(values[key]) for key in SCORES}}


def _means(rows: list[dict], class_name: str) -> dict:
    """Mean scores over rows that are not both empty, and how many rows were left out."""
    rows = [row for row in rows if row["class"] == class_name]
    counted = [row for row in rows if not math.isnan(row["dice"])]
    means = {
        key: float(np.mean([row[key] for row in counted])) if counted else math.nan
        for key in SCORES
    }
    return {
        **means,
        "counted": len(counted),
        "both_empty": len(rows) - len(counted),
        "empty_truth_predicted": sum(row["true_pixels"] == 0 for row in counted),
    }


def write_report(report: Report, folder: Path) -> None:
    """evaluation.csv (the original's two lines), evaluation.json, per-image and per-case CSVs."""
    summary = report.summary
    lines = []
    if summary["loss"] is not None:
        lines.append(f"{summary['loss']['name']},{summary['loss']['value']:.4f}")
    lines.append(f"dice_coef_multiclass,{summary['dice_coef_multiclass']:.4f}")
    with staged(folder) as staging:  # all four files or none: never half an old report
        write_text(staging / "evaluation.csv", "\n".join(lines) + "\n")
        write_json(staging / "evaluation.json", summary)
        write_text(staging / "evaluation_per_image.csv", csv_text(report.per_image))
        write_text(staging / "evaluation_per_case.csv", csv_text(report.per_case))


def csv_text(rows: list[dict]) -> str:
    """Rows as CSV text, floats with 6 decimals and NaN as an empty cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(value) for key, value in row.items()})
    return buffer.getvalue()


def _cell(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    return value


def summary_rows(summary: dict) -> list[tuple[str, str, str]]:
    """(metric, value, counted) rows for a table: per-case foreground scores first, then per
    image, then the loss, and the original's dice_coef_multiclass last."""
    rows = []
    for level, unit in (("per_case", "case"), ("per_image", "image")):
        for name, levels in summary["classes"].items():
            stats = levels[level]
            counted = plural(stats["counted"], unit)
            if stats["both_empty"]:
                counted += f"; {stats['both_empty']} both empty, left out"
            if stats["empty_truth_predicted"]:
                counted += f"; {stats['empty_truth_predicted']} only false positives (0)"
            level_name = level.replace("_", " ")
            for key, title in TITLES.items():
                rows.append((
                    f"{name} {title}, {level_name}", _number(stats[key]),
                    counted if key == "dice" else "",
                ))
    if summary["loss"] is not None:
        rows.append((summary["loss"]["name"], _number(summary["loss"]["value"]), "test loss"))
    rows.append((
        "dice_coef_multiclass", _number(summary["dice_coef_multiclass"]),
        "the original's metric (background included)",
    ))
    return rows


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def evaluate_model(model, config) -> Report:
    """Score `model` on the test split at each mask's own size: the probabilities that `infer`
    makes its masks from (resized back to the image's size; infer.mirror as set) against the
    mask file. The loss is taken, as Keras' evaluate would, over batches of train.batch_size
    consecutive images; a batch ends early where the image size changes, and holds no more
    pixels than train.batch_size model inputs (fewer large images: memory stays bounded)."""
    from flexunet_k3.inference import iter_probabilities  # imports keras: not at the top

    pairs = pair_files(*config.data.split_dirs("test"))
    warn_shared_cases([image for image, _ in pairs], _training_images(config), "train or valid",
                      "the test scores are not held out")
    colors = [spec.color for spec in config.data.classes]
    off_color = np.zeros(len(pairs), np.int64)
    truths: deque[np.ndarray] = deque()  # read, not yet scored: at most one inference batch

    def images():
        for row, (image_path, mask_path) in enumerate(pairs):
            image, labels, off_color[row] = read_pair(
                image_path, mask_path, config.model.image_channels, colors
            )
            truths.append(labels)
            yield image

    pixels = config.train.batch_size * config.model.image_height * config.model.image_width
    scorer = Scorer([spec.name for spec in config.data.classes], config.train.loss)
    scored = zip(pairs, iter_probabilities(model, images(), config), strict=True)
    batch: list[tuple[str, np.ndarray, np.ndarray]] = []
    for (image_path, _), probabilities in track(scored, "evaluating", total=len(pairs)):
        truth = truths.popleft()
        if batch and (batch[0][1].shape != truth.shape or (len(batch) + 1) * truth.size > pixels):
            scorer.add(*_stacked(batch))
            batch = []
        batch.append((image_path.name, truth, probabilities))
    if batch:
        scorer.add(*_stacked(batch))
    if pairs:
        warn_off_color(pairs[0][1].parent, off_color, stacklevel=2)
    return scorer.report()


def _training_images(config) -> list[Path]:
    """The train and valid images, where their folders are set and exist."""
    paths = []
    for split in ("train", "valid"):
        try:
            folder = config.data.split_dirs(split)[0]
        except UserError:  # neither data.dataset nor data.{split}_*: nothing to compare with
            continue
        if folder.is_dir():
            paths += files_in(folder)[0]
    return paths


def _stacked(batch: list[tuple[str, np.ndarray, np.ndarray]]):
    """(names, labels (B, H, W), probabilities (B, H, W, C)) of same-size images."""
    names, truths, probabilities = zip(*batch, strict=True)
    return list(names), np.stack(truths), np.stack(probabilities)


def pair_masks(predictions_dir: Path, masks_dir: Path) -> list[tuple[Path, Path]]:
    """Predicted and ground-truth mask files paired by file stem (a folder that is missing,
    empty or does not pair refused)."""
    return pair_files(predictions_dir, masks_dir, image_suffixes=MASK_SUFFIXES)


def score_masks(pairs: list[tuple[Path, Path]], classes) -> Report:
    """Score predicted mask files against their ground truth (`pair_masks`); no model."""
    colors = [spec.color for spec in classes]
    scorer = Scorer([spec.name for spec in classes])
    off_color = np.zeros((len(pairs), 2), np.int64)  # per pair: prediction's, ground truth's
    for row, (prediction_path, mask_path) in enumerate(track(pairs, "scoring")):
        predicted, off_color[row, 0] = read_mask(prediction_path, colors)
        truth, off_color[row, 1] = read_mask(mask_path, colors)
        if predicted.shape != truth.shape:
            raise UserError(
                f"{prediction_path}: {predicted.shape[1]}x{predicted.shape[0]} pixels but its "
                f"ground truth {mask_path} has {truth.shape[1]}x{truth.shape[0]}; "
                "predict at the ground truth's size"
            )
        one_hot = np.eye(len(colors), dtype=np.float32)[predicted]
        scorer.add([mask_path.name], truth[None], one_hot[None])
    for folder, counts in zip((pairs[0][0].parent, pairs[0][1].parent), off_color.T, strict=True):
        warn_off_color(folder, counts, stacklevel=2)
    return scorer.report()
