"""Whole-volume evaluation (README, "Whole-volume scores"): label NIfTIs scored per patient and
per foreground class against ground truth, in mm from the header's voxel spacing.

Reports: `evaluation_volumes.csv` (a row per volume and class) and `evaluation_volumes.json`
(mean, std and median of each score, with how many volumes were counted and left out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flexunet_k3.config import Config
from flexunet_k3.data.nifti import Volume, check_class_ids, check_same_grid
from flexunet_k3.errors import UserError, listing, plural
from flexunet_k3.evaluation import csv_text
from flexunet_k3.files import staged, write_json, write_text
from flexunet_k3.progress import track
from flexunet_k3.volume_inference import (
    PROBABILITIES_SUFFIX,
    VolumeInput,
    segment_volume,
    volumes_at,
)
from flexunet_k3.volume_scores import score_volume, summarize

SCORES = ("dice", "iou", "precision", "recall", "hd95", "surface_dice")
REPORT_FILES = ("evaluation_volumes.csv", "evaluation_volumes.json")


@dataclass
class VolumeReport:
    rows: list[dict]
    summary: dict


def label_map(volume: Volume, classes: int, role: str) -> np.ndarray:
    """The volume's voxels as class ids 0..classes-1; refused if any voxel is no class."""
    check_class_ids(volume, role, classes)
    return volume.data.astype(np.uint8)


def score_case(name: str, prediction: np.ndarray, truth: Volume, class_names: Sequence[str],
               tolerance_mm: float) -> list[dict]:
    """One row per foreground class of one volume."""
    labels = label_map(truth, len(class_names), "the label")
    return [
        {"case": name, "class": class_names[class_id],
         **score_volume(labels, prediction, class_id, truth.spacing, tolerance_mm)}
        for class_id in range(1, len(class_names))
    ]


def evaluate_volume_files(predictions: Path, labels: Path, class_names: Sequence[str],
                          tolerance_mm: float) -> VolumeReport:
    """Score label NIfTIs (a file or folder) against ground truth paired by name; the
    probabilities `infer --probabilities` wrote beside them are passed over."""
    truths = {item.name: item for item in volumes_at(labels, tasks=False)}
    found = [item for item in volumes_at(predictions, tasks=False)
             if not item.name.endswith(PROBABILITIES_SUFFIX) or item.name in truths]
    missing = [item.name for item in found if item.name not in truths]
    if missing:
        raise UserError(f"{labels}: no label for {listing(missing)}; labels pair with "
                        "predictions by file name")
    rows = []
    for item in track(found, "scoring volumes", total=len(found)):
        prediction, truth = item.read(), truths[item.name].read()
        check_same_grid(truth, prediction, "predict on the labelled volume")
        predicted = label_map(prediction, len(class_names), "the prediction")
        rows += score_case(item.name, predicted, truth, class_names, tolerance_mm)
    return VolumeReport(rows, _summary(rows, class_names, tolerance_mm))


def evaluate_held_out(model, config: Config, inputs: list[VolumeInput],
                      window: tuple[float, float], tolerance_mm: float) -> VolumeReport:
    """Segment each held-out volume with `model` and score it against its label."""
    class_names = [spec.name for spec in config.data.classes]
    rows = []
    for item in track(inputs, "evaluating volumes", total=len(inputs)):
        volume, truth = item.read(), item.label()
        check_same_grid(truth, volume, "a label must lie on its image's voxel grid")
        predicted, _ = segment_volume(model, volume, config, window)
        rows += score_case(item.name, predicted, truth, class_names, tolerance_mm)
    return VolumeReport(rows, _summary(rows, class_names, tolerance_mm))


def _summary(rows: list[dict], class_names: Sequence[str], tolerance_mm: float) -> dict:
    if not rows:
        raise UserError("nothing to evaluate: no volumes were scored")
    return {
        "volumes": len({row["case"] for row in rows}),
        "tolerance_mm": tolerance_mm,
        "hd95": "max of the two directed 95th percentiles of border distances (MONAI)",
        "classes": {
            name: summarize([row for row in rows if row["class"] == name], SCORES)
            for name in class_names[1:]
        },
    }


def write_volume_report(report: VolumeReport, folder: Path) -> None:
    """evaluation_volumes.csv (a row per volume and class) and evaluation_volumes.json."""
    with staged(folder) as staging:  # both files or neither
        write_text(staging / REPORT_FILES[0], csv_text(report.rows))
        write_json(staging / REPORT_FILES[1], report.summary)


def summary_rows(summary: dict) -> list[tuple[str, str, str, str]]:
    """(metric, mean, median, counted) rows for a table."""
    rows = []
    for name, stats in summary["classes"].items():
        for key in SCORES:
            s = stats[key]
            counted = plural(s["counted"], "volume")
            if s["both_empty"]:
                counted += f"; {s['both_empty']} both empty, left out"
            if s["not_finite"]:
                counted += f"; {s['not_finite']} with one side empty, left out"
            unit = " (mm)" if key == "hd95" else ""
            rows.append((f"{name} {key}{unit}", _number(s["mean"], s["std"]),
                         _number(s["median"]), counted))
    return rows


def _number(value: float, std: float | None = None) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.4f}" + (f" ± {std:.4f}" if std is not None else "")
