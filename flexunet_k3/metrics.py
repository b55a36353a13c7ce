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
    """int32 class map (N, H, W) from probabilities: argmax, or > 0.5 for one sigmoid channel.

    Two classes compare their channels (ties go to class 0, as argmax's): TensorFlow's CPU
    argmax over a last axis of 2 takes 4x as long.
    """
    if y_pred.shape[-1] == 1:
        return ops.cast(y_pred[..., 0] > 0.5, "int32")
    if y_pred.shape[-1] == 2:
        return ops.cast(y_pred[..., 1] > y_pred[..., 0], "int32")
    return ops.cast(ops.argmax(y_pred, axis=-1), "int32")


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
class SegmentationScores(keras.metrics.Metric):
    """The training metrics in one pass over a batch, one class map per batch for all of them.

    `result()` gives `dice_coef_multiclass` (the original's, mean per image) and, per foreground
    class, `dice_<name>` and `iou_<name>`: the mean per image over the images where ground truth
    or prediction holds the class (both empty: left out and counted apart; NaN when no image
    counted). Keras puts each in the logs under its own name. Sample weights are not used.
    """

    def __init__(self, class_names, name="segmentation_scores", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.class_names = list(class_names)  # background first, as data.classes
        foreground = len(self.class_names) - 1
        self.multiclass = self.add_variable(shape=(), initializer="zeros", name="multiclass")
        self.images = self.add_variable(shape=(), initializer="zeros", name="images")
        self.dice = self.add_variable(shape=(foreground,), initializer="zeros", name="dice")
        self.iou = self.add_variable(shape=(foreground,), initializer="zeros", name="iou")
        self.counted = self.add_variable(shape=(foreground,), initializer="zeros", name="counted")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.stop_gradient(probabilities(y_pred))
        truth = true_labels(y_true, y_pred.shape[-1])
        self.multiclass.assign_add(ops.sum(dice_coef_multiclass(truth, y_pred)))
        self.images.assign_add(ops.cast(ops.shape(truth)[0], "float32"))
        foreground = ops.arange(1, len(self.class_names), dtype="int32")  # (F,)
        t = ops.equal(ops.expand_dims(ops.cast(truth, "int32"), -1), foreground)  # (N, H, W, F)
        p = ops.equal(ops.expand_dims(predicted_labels(y_pred), -1), foreground)
        intersection = pixels(ops.logical_and(t, p))  # (N, F)
        total = pixels(t) + pixels(p)
        self.dice.assign_add(ops.sum(2.0 * intersection / ops.maximum(total, 1.0), axis=0))
        self.iou.assign_add(ops.sum(intersection / ops.maximum(total - intersection, 1.0), axis=0))
        self.counted.assign_add(ops.sum(ops.cast(total > 0, "float32"), axis=0))

    def result(self):
        results = {"dice_coef_multiclass": self.multiclass / ops.maximum(self.images, 1.0)}
        some = self.counted > 0
        dice = ops.where(some, self.dice / ops.maximum(self.counted, 1.0), float("nan"))
        iou = ops.where(some, self.iou / ops.maximum(self.counted, 1.0), float("nan"))
        for index, name in enumerate(self.class_names[1:]):
            results[f"dice_{name}"] = dice[index]
            results[f"iou_{name}"] = iou[index]
        return results

    def get_config(self):
        return {**super().get_config(), "class_names": self.class_names}


def pixels(mask):
    """Per image and class, the pixels set in a (N, H, W, F) boolean mask, as float32 (N, F)."""
    return ops.sum(ops.cast(mask, "float32"), axis=(1, 2))


def segmentation_metrics(class_names: list[str]) -> list:
    """The metrics compiled into a model: one SegmentationScores for the original's metric and
    Dice and IoU per foreground class."""
    return [SegmentationScores(class_names)]
