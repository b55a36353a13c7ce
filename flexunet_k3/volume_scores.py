"""Whole-volume scores per foreground class, distances in mm, as nnU-Net and MONAI report them.

Overlap: Dice, IoU, precision and recall come from voxel counts by
`flexunet_k3.scores.scores_from_counts`, the same rules as the 2D scores (README, "Metrics").

Surfaces follow MONAI's `monai.metrics` (`get_mask_edges`, `get_surface_distance`,
`compute_hausdorff_distance(percentile=95)`, `compute_surface_dice(use_subvoxels=False)`):

- Border voxels: `mask ^ binary_erosion(mask)` with scipy's default structuring element, the
  6-neighbour cross (`generate_binary_structure(3, 1)`). Outside the array counts as background,
  so a mask voxel on the array's edge is a border voxel; MONAI gets the same by cropping to the
  foreground with a zero-padded 1-voxel margin.
- A border voxel's distance to the other surface: the Euclidean distance in mm to the nearest
  border voxel of the other mask, found with a k-d tree (`scipy.spatial.cKDTree`). MONAI's
  `distance_transform_edt(~other_border, sampling=spacing)` gives the same at that voxel, but
  over the whole box: gigabytes once a stray voxel far off widens it to the whole CT.
- `hd95`: the larger of the two directed 95th percentiles (numpy, linear interpolation).
- `surface_dice` (normalized surface Dice at `tolerance_mm`): border voxels of either mask whose
  distance to the other surface is <= `tolerance_mm`, over all border voxels of both.

Empty masks for a class:

- Both empty: every score is NaN and `both_empty` is True; such volumes are counted apart, not
  averaged in (the 2D rules; MONAI also gives NaN).
- Exactly one empty: Dice, IoU, precision and recall 0 (`scores_from_counts`; MONAI's DiceMetric
  would give NaN for an empty truth), `surface_dice` 0 (MONAI), and `hd95` NaN: MONAI's
  percentile Hausdorff distance interpolates between infinite distances and returns NaN (its
  `percentile=None` maximum returns inf). A NaN `hd95` with voxels in one mask is a missed or
  spurious structure; `summarize` counts those apart (`not_finite`), never silently.

The work is done in the bounding box of truth | prediction padded by 1 voxel: the results equal
those on the whole volume, and a large CT with a small tumor stays fast; the distances cost
memory by border voxels, not by that box.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage, spatial

from flexunet_k3.scores import scores_from_counts

HD_PERCENTILE = 95


def border_voxels(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask (or outside the array)."""
    mask = np.asarray(mask, dtype=bool)
    return mask ^ ndimage.binary_erosion(mask)


def surface_distances(from_points: np.ndarray, to_points: np.ndarray) -> np.ndarray:
    """Distance from each of `from_points` to the nearest of `to_points` (both (n, 3), mm)."""
    return spatial.cKDTree(to_points).query(from_points)[0]


def surface_scores(
    truth: np.ndarray, pred: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 1.0
) -> dict[str, float]:
    """HD95 (mm) and surface Dice of two boolean masks of the same shape, uncropped."""
    truth_border, pred_border = np.argwhere(border_voxels(truth)), np.argwhere(border_voxels(pred))
    if not len(truth_border) and not len(pred_border):
        return {"hd95": math.nan, "surface_dice": math.nan}
    if not len(truth_border) or not len(pred_border):
        return {"hd95": math.nan, "surface_dice": 0.0}
    # from the corner of both borders, so a crop or a margin gives the very same numbers
    origin = np.minimum(truth_border.min(axis=0), pred_border.min(axis=0))
    truth_mm, pred_mm = ((border - origin) * np.asarray(spacing, dtype=np.float64)
                         for border in (truth_border, pred_border))
    pred_to_truth = surface_distances(pred_mm, truth_mm)
    truth_to_pred = surface_distances(truth_mm, pred_mm)
    both = (pred_to_truth, truth_to_pred)
    within = sum(np.count_nonzero(d <= tolerance_mm) for d in both)
    return {
        "hd95": float(max(np.percentile(d, HD_PERCENTILE) for d in both)),
        "surface_dice": float(within / sum(d.size for d in both)),
    }


def foreground_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Slices of the bounding box of `mask` grown by `margin`, clipped to the array; None if
    `mask` is empty."""
    box = []
    for axis, size in enumerate(mask.shape):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return None
        box.append(slice(max(hits[0] - margin, 0), min(hits[-1] + 1 + margin, size)))
    return tuple(box)


def score_volume(
    truth: np.ndarray,
    prediction: np.ndarray,
    class_id: int,
    spacing: Sequence[float],
    tolerance_mm: float = 1.0,
) -> dict:
    """Scores of one class in a 3D label volume against its ground truth (module docstring).

    Returns plain Python values: true_voxels, pred_voxels, intersection, dice, iou, precision,
    recall, hd95 (mm), surface_dice and both_empty.
    """
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    _check_inputs(truth, prediction, spacing, tolerance_mm)
    truth_mask, pred_mask = truth == class_id, prediction == class_id
    box = foreground_box(truth_mask | pred_mask)
    if box is None:
        return _row(0, 0, 0, {"hd95": math.nan, "surface_dice": math.nan})
    truth_mask, pred_mask = truth_mask[box], pred_mask[box]
    return _row(
        int(np.count_nonzero(truth_mask)),
        int(np.count_nonzero(pred_mask)),
        int(np.count_nonzero(truth_mask & pred_mask)),
        surface_scores(truth_mask, pred_mask, tuple(float(s) for s in spacing), tolerance_mm),
    )


def _row(true_voxels: int, pred_voxels: int, intersection: int, surface: dict) -> dict:
    overlap = scores_from_counts(true_voxels, pred_voxels, intersection)
    return {
        "true_voxels": true_voxels,
        "pred_voxels": pred_voxels,
        "intersection": intersection,
        **{key: float(value) for key, value in overlap.items()},
        **surface,
        "both_empty": true_voxels == 0 and pred_voxels == 0,
    }


def _check_inputs(truth, prediction, spacing, tolerance_mm) -> None:
    if truth.ndim != 3 or truth.shape != prediction.shape:
        raise ValueError(
            f"truth and prediction must be 3D of the same shape, got {truth.shape} and "
            f"{prediction.shape}"
        )
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive numbers (mm per axis), got {spacing}")
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")


def summarize(rows: Sequence[dict], keys: Iterable[str]) -> dict[str, dict]:
    """Per key: mean, std (population) and median over the rows that are not both empty and
    whose value is finite, `counted` (those rows), `both_empty` (rows left out as both empty)
    and `not_finite` (other rows left out: NaN or inf, e.g. HD95 of a missed tumor)."""
    scored = [row for row in rows if not row["both_empty"]]
    summary = {}
    for key in keys:
        values = np.array([row[key] for row in scored], dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size:
            stats = {"mean": finite.mean(), "std": finite.std(), "median": np.median(finite)}
        else:
            stats = dict.fromkeys(("mean", "std", "median"), math.nan)
        summary[key] = {
            **{name: float(value) for name, value in stats.items()},
            "counted": int(finite.size),
            "both_empty": len(rows) - len(scored),
            "not_finite": int(values.size - finite.size),
        }
    return summary
