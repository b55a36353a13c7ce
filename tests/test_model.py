"""The FlexUNet architecture: the original's parameter count, output shapes, options (its
per-level schedule and the checks of model names: test_config.py); the compiled model's
optimizer state."""

from pathlib import Path

import numpy as np
import pytest
from keras import ops

from flexunet_k3.config import ModelConfig, load_config
from flexunet_k3.model_io import compile_model
from flexunet_k3.models import build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("changes", [
    {"model": {}}, {"normalization": True, "num_classes": 3, "base_kernels": (3, 5)},
    {"num_classes": 1, "image_channels": 1, "base_kernels": 1, "dilation": 2},
])
def test_the_weight_count_the_config_checks_is_the_models(changes):
    """ModelConfig.weight_count (its bound refuses a model too big to build) counts what
    keras builds."""
    cfg = ModelConfig(image_height=32, image_width=32, num_layers=3, base_filters=4,
                      **{key: value for key, value in changes.items() if key != "model"})
    assert cfg.weight_count() == build_model(cfg).count_params()
    lung = load_config(REPO / "configs" / "lung.yaml").model
    assert lung.weight_count() == 124_996_866


@pytest.mark.parametrize("normalization", [False, True])
@pytest.mark.parametrize("num_classes", [1, 2, 4])
def test_output_shape_and_activation(normalization, num_classes):
    cfg = ModelConfig(
        image_height=32,
        image_width=48,
        image_channels=1,
        num_classes=num_classes,
        base_filters=4,
        base_kernels=5,
        num_layers=3,
        dilation=2,
        normalization=normalization,
        normalization_momentum=0.9,
        input_normalize=True,
    )
    model = build_model(cfg)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 48, 1)).astype("float32")
    y = ops.convert_to_numpy(model(x))
    assert y.shape == (2, 32, 48, num_classes) and y.dtype == np.float32
    if num_classes > 1:
        assert np.allclose(y.sum(-1), 1.0, atol=1e-5)
    assert ((y >= 0) & (y <= 1)).all()
    names = [layer.__class__.__name__ for layer in model.layers]
    assert "Rescaling" in names and "Lambda" not in names
    assert ("BatchNormalization" in names) == normalization
    momenta = {layer.momentum for layer in model.layers if hasattr(layer, "momentum")}
    assert momenta == ({0.9} if normalization else set())


def test_a_compiled_model_has_its_optimizer_state_before_the_first_step(tiny_config):
    """compile_model builds the optimizer: TensorFlow traces a first step that makes variables
    twice (about 5 s more for the demo), and no step makes any now."""
    model = compile_model(load_config(tiny_config))
    made = [id(variable) for variable in model.optimizer.variables]
    assert model.optimizer.built and len(made) > 2 * len(model.trainable_variables)
    height, width, channels = model.input_shape[1:]
    images = np.zeros((2, height, width, channels), "float32")
    labels = np.zeros((2, height, width, model.output_shape[-1]), "float32")
    labels[..., 0] = 1
    model.fit(images, labels, epochs=1, verbose=0)
    assert [id(variable) for variable in model.optimizer.variables] == made
