"""Every Keras metric and loss equals its numpy reference (flexunet_k3.scores) on this backend."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from flexunet_k3 import scores
from flexunet_k3.losses import categorical_crossentropy, ce_dice_loss, soft_dice_loss
from flexunet_k3.metrics import SegmentationScores, dice_coef_multiclass, segmentation_metrics

TOL = 1e-5


def probabilities(rng, shape, num_classes):
    logits = rng.normal(size=(*shape, num_classes)).astype("float32") * 3
    if num_classes == 1:
        return 1 / (1 + np.exp(-logits))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype("float32")


def cases(num_classes):
    """(labels, probabilities) pairs: random, empty truth, empty prediction, both empty."""
    rng = np.random.default_rng(num_classes)
    shape = (4, 12, 10)
    labels = rng.integers(0, max(num_classes, 2), shape)
    probs = probabilities(rng, shape, num_classes)
    out = {"random": (labels, probs)}
    empty_truth = labels.copy()
    empty_truth[0] = 0
    out["empty truth"] = (empty_truth, probs)
    background = np.zeros_like(probs)
    if num_classes > 1:
        background[..., 0] = 1.0
    out["empty prediction"] = (labels, background)
    both = labels.copy()
    both[1:3] = 0
    mixed = probs.copy()
    mixed[1:3] = background[1:3]
    out["both empty"] = (both, mixed)
    return out


def as_numpy(value):
    return np.asarray(ops.convert_to_numpy(value), dtype=np.float64)


ALL_CASES = [(c, name) for c in (1, 2, 4) for name in cases(c)]


@pytest.mark.parametrize("num_classes, case", ALL_CASES)
@pytest.mark.parametrize("one_hot", [False, True])
def test_dice_coef_multiclass_matches_reference(num_classes, case, one_hot):
    labels, probs = cases(num_classes)[case]
    truth = scores.one_hot(labels, num_classes) if one_hot else labels
    keras_value = as_numpy(dice_coef_multiclass(truth, probs)).mean()
    assert abs(keras_value - scores.dice_coef_multiclass(labels, probs)) < TOL


def class_names(num_classes):
    return [f"class{c}" for c in range(max(num_classes, 2))]


@pytest.mark.parametrize("num_classes, case", ALL_CASES)
def test_segmentation_scores_match_reference(num_classes, case):
    labels, probs = cases(num_classes)[case]
    metric = SegmentationScores(class_names(num_classes))
    # two batches: the state must accumulate across updates
    metric.update_state(labels[:2], probs[:2])
    metric.update_state(scores.one_hot(labels[2:], num_classes), probs[2:])
    results = {name: float(as_numpy(value)) for name, value in metric.result().items()}
    expected = scores.dice_coef_multiclass(labels, probs)
    assert abs(results.pop("dice_coef_multiclass") - expected) < TOL
    both_empty = as_numpy(metric.images) - as_numpy(metric.counted)
    for index, class_id in enumerate(scores.foreground_classes(num_classes)):
        for kind in ("dice", "iou"):
            expected = scores.foreground_score(labels, probs, class_id, kind)
            got = results.pop(f"{kind}_class{class_id}")
            if math.isnan(expected["score"]):
                assert math.isnan(got)
            else:
                assert abs(got - expected["score"]) < TOL
            assert both_empty[index] == expected["both_empty"]
    assert not results  # nothing else


def test_three_classes_pick_the_argmax():
    """With more than two classes the class map is the argmax (ties to the lower class)."""
    probs = np.array([[[[0.2, 0.5, 0.3], [0.4, 0.2, 0.4], [0.1, 0.1, 0.8]]]], "float32")
    labels = np.array([[[1, 2, 2]]])  # pixel 2 is predicted as class 0 (tie 0.4 / 0.4)
    metric = SegmentationScores(["background", "a", "b"])
    metric.update_state(labels, probs)
    results = {name: float(as_numpy(value)) for name, value in metric.result().items()}
    assert results["dice_a"] == pytest.approx(1.0) and results["dice_b"] == pytest.approx(2 / 3)


def test_empty_rules():
    """Both empty is left out of the mean; empty truth with a prediction scores 0."""
    truth = np.zeros((3, 4, 4), int)
    truth[0, :2, :2] = 1  # image 0: a perfect prediction
    pred_labels = truth.copy()
    pred_labels[1, 0, 0] = 1  # image 1: empty truth, one predicted pixel -> 0
    probs = np.eye(2, dtype="float32")[pred_labels]  # image 2: both empty -> counted apart
    result = scores.foreground_score(truth, probs, 1)
    assert result == {"score": 0.5, "counted": 2, "both_empty": 1}
    metric = SegmentationScores(["background", "tumor"])
    metric.update_state(truth, probs)
    assert abs(float(as_numpy(metric.result()["dice_tumor"])) - 0.5) < TOL
    nothing = SegmentationScores(["background", "tumor"])
    nothing.update_state(np.zeros((2, 4, 4)), np.eye(2, dtype="float32")[np.zeros((2, 4, 4), int)])
    assert math.isnan(float(as_numpy(nothing.result()["dice_tumor"])))


@pytest.mark.parametrize("num_classes, case", ALL_CASES)
def test_losses_match_reference(num_classes, case):
    labels, probs = cases(num_classes)[case]
    ce = as_numpy(categorical_crossentropy(labels, probs)).mean()
    assert abs(ce - scores.crossentropy(labels, probs)) < TOL * max(1.0, ce)
    dice = float(as_numpy(soft_dice_loss(labels, probs)).mean())
    assert abs(dice - scores.soft_dice_loss(labels, probs)) < TOL
    both = float(as_numpy(ce_dice_loss(labels, probs)).mean())
    assert (
        abs(both - (scores.crossentropy(labels, probs) + scores.soft_dice_loss(labels, probs)))
        < 1e-4
    )


def test_compiled_model_round_trips_with_custom_objects(tmp_path):
    from flexunet_k3.config import ModelConfig
    from flexunet_k3.losses import get_loss
    from flexunet_k3.models import build_model

    tiny = ModelConfig(
        image_height=32, image_width=32, base_filters=4, base_kernels=3, num_layers=3
    )
    model = build_model(tiny)
    model.compile(
        optimizer="adam",
        loss=get_loss("ce_dice"),
        metrics=segmentation_metrics(["background", "tumor"]),
    )
    rng = np.random.default_rng(0)
    x = rng.random((2, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 2, (2, 32, 32))
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert np.allclose(as_numpy(loaded(x)), as_numpy(model(x)), atol=1e-6)
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    after = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert set(after) == {"loss", "dice_coef_multiclass", "dice_tumor", "iou_tumor"}
    assert all(abs(before[k] - after[k]) < 1e-5 for k in before)
