"""Losses in keras.ops only; `flexunet_k3.scores` holds their numpy references."""

from __future__ import annotations

import keras
from keras import ops

from flexunet_k3.errors import UserError
from flexunet_k3.metrics import PACKAGE, one_hot, probabilities, true_labels

EPSILON = 1e-7


@keras.saving.register_keras_serializable(package=PACKAGE)
def categorical_crossentropy(y_true, y_pred):
    """Pixel cross-entropy for class maps or one-hot labels (binary for one sigmoid channel).

    The probability of the true class is gathered rather than multiplied by a one-hot map:
    less memory, and Keras' sparse cross-entropy fails in backward on the torch backend.
    """
    y_pred = ops.clip(probabilities(y_pred), EPSILON, 1.0 - EPSILON)
    num_classes = y_pred.shape[-1]
    if num_classes == 1:
        truth = one_hot(y_true, 1)[..., 0]
        p = y_pred[..., 0]
        return -(truth * ops.log(p) + (1.0 - truth) * ops.log(1.0 - p))
    labels = ops.expand_dims(true_labels(y_true, num_classes), -1)
    return -ops.take_along_axis(ops.log(y_pred), labels, axis=-1)[..., 0]


@keras.saving.register_keras_serializable(package=PACKAGE)
def soft_dice_loss(y_true, y_pred, smooth=1e-5):
    """1 - mean over foreground classes of the soft Dice over the whole batch (nnU-Net style),
    repeated for each image (see `_per_image`)."""
    y_pred = probabilities(y_pred)
    num_classes = y_pred.shape[-1]
    truth = one_hot(y_true, num_classes)
    if num_classes > 1:
        truth, y_pred = truth[..., 1:], y_pred[..., 1:]
    axes = (0, 1, 2)
    intersection = ops.sum(truth * y_pred, axis=axes)
    total = ops.sum(truth, axis=axes) + ops.sum(y_pred, axis=axes)
    return _per_image(1.0 - ops.mean((2.0 * intersection + smooth) / (total + smooth)), y_pred)


@keras.saving.register_keras_serializable(package=PACKAGE)
def ce_dice_loss(y_true, y_pred):
    """Cross-entropy plus soft Dice loss, per image."""
    cross_entropy = ops.mean(categorical_crossentropy(y_true, y_pred), axis=(1, 2))
    return cross_entropy + soft_dice_loss(y_true, y_pred)


def _per_image(value, y_pred):
    """A batch-level loss as one value per image. Keras averages it back to `value`; returned
    as a scalar, it would skip Keras' reduction, which under tf.distribute also divides each
    replica's loss by the replica count, so that the summed gradients are the global mean's."""
    return value * ops.ones_like(y_pred[:, 0, 0, 0])


LOSSES = {
    "categorical_crossentropy": categorical_crossentropy,
    "dice": soft_dice_loss,
    "ce_dice": ce_dice_loss,
}


def get_loss(name: str):
    """The loss function configured as `train.loss`."""
    try:
        return LOSSES[name]
    except KeyError:
        raise UserError(f"train.loss: unknown loss {name!r}; known: {', '.join(LOSSES)}") from None
