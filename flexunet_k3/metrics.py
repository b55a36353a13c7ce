"""Keras metrics in keras.ops only; `flexunet_k3.scores` holds their numpy references.

Labels may be integer class maps (N, H, W) / (N, H, W, 1) or one-hot (N, H, W, C).
"""

from __future__ import annotations

import keras
from keras import ops

PACKAGE = "flexunet_k3"


def true_labels(y_true, num_classes: int):
    """Integer class map (N, H, W) from a class map or a one-hot tensor."""
    if len(y_true.shape) == 4 and num_classes > 1 and y_true.shape[-1] == num_classes:
        return ops.argmax(y_true, axis=-1)
    if len(y_true.shape) == 4:
        y_true = y_true[..., 0]
    return ops.cast(y_true, "int32")


def predicted_labels(y_pred):
    """Class map (N, H, W) from probabilities: argmax, or > 0.5 for one sigmoid channel."""
    if y_pred.shape[-1] == 1:
        return ops.cast(y_pred[..., 0] > 0.5, "int32")
    return ops.argmax(y_pred, axis=-1)


def probabilities(y_pred):
    """float32 (N, H, W, C) probabilities. Keras' loss and metric wrappers squeeze a single
    sigmoid channel away (to N, H, W) when the labels are class maps: it is put back."""
    y_pred = ops.cast(y_pred, "float32")
    return ops.expand_dims(y_pred, -1) if len(y_pred.shape) == 3 else y_pred


def one_hot(y_true, num_classes: int, dtype="float32"):
    """(N, H, W, C) one-hot; a single sigmoid channel keeps the 0/1 map."""
    labels = true_labels(y_true, num_classes)
    if num_classes == 1:
        return ops.cast(labels, dtype)[..., None]
    return ops.one_hot(labels, num_classes, dtype=dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
def dice_coef_multiclass(y_true, y_pred, smooth=1.0):
    """The original's metric: per image over H, W and all classes (background too).

    Kept so numbers compare with the original's; it is near 1 for any mostly-background
    prediction, so reports lead with the foreground Dice instead.
    """
    y_pred = probabilities(y_pred)
    truth = one_hot(y_true, y_pred.shape[-1])
    intersection = ops.sum(truth * y_pred, axis=(1, 2, 3))
    total = ops.sum(truth, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3))
    return (2.0 * intersection + smooth) / (total + smooth)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ForegroundScore(keras.metrics.Metric):
    """Mean per-image Dice or IoU of one foreground class over images that are not both empty.

    Images where ground truth and prediction are both empty for the class are counted in
    `both_empty` and left out of the mean; the result is NaN when no image counted.
    """

    def __init__(self, class_id: int = 1, kind: str = "dice", name=None, dtype=None):
        if kind not in ("dice", "iou"):
            raise ValueError(f"kind must be 'dice' or 'iou', got {kind!r}")
        super().__init__(name=name or f"{kind}_{class_id}", dtype=dtype)
        self.class_id = class_id
        self.kind = kind
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.counted = self.add_variable(shape=(), initializer="zeros", name="counted")
        self.both_empty = self.add_variable(shape=(), initializer="zeros", name="both_empty")

    def update_state(self, y_true, y_pred, sample_weight=None):
        t = ops.cast(ops.equal(true_labels(y_true, y_pred.shape[-1]), self.class_id), "float32")
        p = ops.cast(ops.equal(predicted_labels(y_pred), self.class_id), "float32")
        intersection = ops.sum(t * p, axis=(1, 2))
        total = ops.sum(t, axis=(1, 2)) + ops.sum(p, axis=(1, 2))
        denominator = total if self.kind == "dice" else total - intersection
        numerator = 2.0 * intersection if self.kind == "dice" else intersection
        counted = ops.cast(total > 0, "float32")
        score = numerator / ops.maximum(denominator, 1.0)
        self.total.assign_add(ops.sum(score * counted))
        self.counted.assign_add(ops.sum(counted))
        self.both_empty.assign_add(ops.sum(1.0 - counted))

    def result(self):
        return ops.where(
            self.counted > 0, self.total / ops.maximum(self.counted, 1.0), float("nan")
        )

    def get_config(self):
        return {**super().get_config(), "class_id": self.class_id, "kind": self.kind}


def segmentation_metrics(class_names: list[str]) -> list:
    """The metrics compiled into a model: the original's, then Dice and IoU per foreground class."""
    num_classes = len(class_names)
    foreground = range(1, num_classes)
    return [
        dice_coef_multiclass,
        *(ForegroundScore(c, "dice", name=f"dice_{class_names[c]}") for c in foreground),
        *(ForegroundScore(c, "iou", name=f"iou_{class_names[c]}") for c in foreground),
    ]
