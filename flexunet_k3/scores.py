"""Segmentation scores in numpy: the reference for the Keras metrics and the code behind reports.

Rules (README, "Metrics"): foreground classes only; an image where both ground truth and
prediction are empty for a class is counted apart (`both_empty`), not averaged in as 1.0; empty
ground truth with a non-empty prediction scores 0. Labels are integer class maps (N, H, W) or
one-hot (N, H, W, C); predictions are probabilities (N, H, W, C).
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-7


def true_labels(y_true: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer class map (N, H, W) from a class map or a one-hot array."""
    y_true = np.asarray(y_true)
    if y_true.ndim == 4 and num_classes > 1 and y_true.shape[-1] == num_classes:
        return y_true.argmax(-1)
    if y_true.ndim == 4:
        y_true = y_true[..., 0]
    return y_true.astype(np.int64)


def predicted_labels(y_pred: np.ndarray) -> np.ndarray:
    """Class map (N, H, W) from probabilities: argmax, or > 0.5 for one sigmoid channel."""
    y_pred = np.asarray(y_pred)
    if y_pred.shape[-1] == 1:
        return (y_pred[..., 0] > 0.5).astype(np.int64)
    return y_pred.argmax(-1)


def one_hot(y_true: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, H, W, C) float one-hot; a single sigmoid channel keeps the 0/1 map."""
    labels = true_labels(y_true, num_classes)
    if num_classes == 1:
        return labels[..., None].astype(np.float32)
    return np.eye(num_classes, dtype=np.float32)[labels]


def foreground_classes(num_classes: int) -> list[int]:
    """Class ids scored as foreground: 1..C-1, or 1 for a single sigmoid channel."""
    return [1] if num_classes == 1 else list(range(1, num_classes))


def dice_coef_multiclass(y_true, y_pred, smooth: float = 1.0) -> float:
    """The original's metric: per image over H, W and all classes (background too), batch mean."""
    truth = one_hot(y_true, np.asarray(y_pred).shape[-1]).astype(np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    axes = tuple(range(1, truth.ndim))
    intersection = (truth * pred).sum(axes)
    per_image = (2.0 * intersection + smooth) / (truth.sum(axes) + pred.sum(axes) + smooth)
    return float(per_image.mean())


def pixel_counts(truth: np.ndarray, pred: np.ndarray, class_id: int) -> dict[str, np.ndarray]:
    """Per image: ground-truth, predicted and overlapping pixels of one class."""
    t = truth == class_id
    p = pred == class_id
    axes = tuple(range(1, t.ndim))
    return {
        "true_pixels": t.sum(axes),
        "pred_pixels": p.sum(axes),
        "intersection": (t & p).sum(axes),
    }


def scores_from_counts(true_pixels, pred_pixels, intersection) -> dict[str, np.ndarray]:
    """Dice, IoU, precision and recall from pixel counts; NaN where undefined (both empty)."""
    true_px, pred_px, inter = (
        np.asarray(a, dtype=np.float64) for a in (true_pixels, pred_pixels, intersection)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "dice": np.where(true_px + pred_px > 0, 2 * inter / (true_px + pred_px), np.nan),
            "iou": np.where(true_px + pred_px > 0, inter / (true_px + pred_px - inter), np.nan),
            "precision": np.where(pred_px > 0, inter / pred_px, np.where(true_px > 0, 0.0, np.nan)),
            "recall": np.where(true_px > 0, inter / true_px, np.where(pred_px > 0, 0.0, np.nan)),
        }


def foreground_score(y_true, y_pred, class_id: int, kind: str = "dice") -> dict[str, float]:
    """Mean per-image Dice or IoU of one class, with the count of both-empty images.

    Returns {"score": mean over images that are not both empty (NaN if none),
    "counted": that number of images, "both_empty": the others}.
    """
    num_classes = np.asarray(y_pred).shape[-1]
    counts = pixel_counts(true_labels(y_true, num_classes), predicted_labels(y_pred), class_id)
    per_image = scores_from_counts(**counts)[kind]
    counted = ~np.isnan(per_image)
    return {
        "score": float(per_image[counted].mean()) if counted.any() else float("nan"),
        "counted": int(counted.sum()),
        "both_empty": int((~counted).sum()),
    }


def crossentropy(y_true, y_pred) -> float:
    """Mean pixel cross-entropy (binary for one sigmoid channel), probabilities clipped as Keras."""
    pred = np.asarray(y_pred, dtype=np.float64)
    truth = one_hot(y_true, pred.shape[-1]).astype(np.float64)
    pred = np.clip(pred, EPSILON, 1 - EPSILON)
    if pred.shape[-1] == 1:
        per_pixel = -(truth * np.log(pred) + (1 - truth) * np.log(1 - pred))[..., 0]
    else:
        per_pixel = -(truth * np.log(pred)).sum(-1)
    return float(per_pixel.mean())


def soft_dice_loss(y_true, y_pred, smooth: float = 1e-5) -> float:
    """1 - mean over foreground classes of the batch soft Dice (nnU-Net style)."""
    pred = np.asarray(y_pred, dtype=np.float64)
    truth = one_hot(y_true, pred.shape[-1]).astype(np.float64)
    channels = [0] if pred.shape[-1] == 1 else list(range(1, pred.shape[-1]))
    t, p = truth[..., channels], pred[..., channels]
    axes = tuple(range(t.ndim - 1))
    dice = (2 * (t * p).sum(axes) + smooth) / (t.sum(axes) + p.sum(axes) + smooth)
    return float(1 - dice.mean())
