"""Run under one backend (KERAS_BACKEND) by test_parity.py.

`build DIR`: for each small config, build the model, give it deterministic numpy weights,
predict a fixed input, save `{backend}_{name}.npy` and `{backend}_{name}.keras`.
`load DIR`: load every other backend's `.keras` (safe_mode) and save its prediction here
as `{backend}_from_{other}_{name}.npy`.
"""

import sys
from pathlib import Path

import keras
import numpy as np

from flexunet_k3.config import ModelConfig
from flexunet_k3.models import build_model

CONFIGS = {
    "plain": ModelConfig(
        image_height=32, image_width=32, base_filters=4, base_kernels=5, num_layers=3
    ),
    "batchnorm_dilated": ModelConfig(
        image_height=32,
        image_width=32,
        num_classes=3,
        base_filters=4,
        base_kernels=7,
        num_layers=3,
        dilation=2,
        normalization=True,
        input_normalize=True,
    ),
    "sigmoid_dilated": ModelConfig(
        image_height=32,
        image_width=32,
        image_channels=1,
        num_classes=1,
        base_filters=4,
        base_kernels=3,
        num_layers=4,
        dilation=3,
    ),
}


def numpy_weights(model, seed=0):
    """He-scaled kernels, small biases, BatchNorm statistics away from identity."""
    rng = np.random.default_rng(seed)
    weights = []
    for variable in model.weights:
        shape, name = tuple(variable.shape), variable.path
        if name.endswith(("moving_variance", "gamma")):
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) == 4:
            value = rng.normal(0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        else:
            value = rng.normal(0, 0.1, shape)
        weights.append(value.astype("float32"))
    return weights


def model_input(config: ModelConfig):
    rng = np.random.default_rng(1)
    shape = (2, config.image_height, config.image_width, config.image_channels)
    scale = 255.0 if config.input_normalize else 1.0
    return (rng.random(shape) * scale).astype("float32")


def predict(model, config):
    return keras.ops.convert_to_numpy(model(model_input(config), training=False))


def main(action: str, folder: Path) -> None:
    backend = keras.backend.backend()
    for name, config in CONFIGS.items():
        if action == "build":
            model = build_model(config)
            model.set_weights(numpy_weights(model))
            np.save(folder / f"{backend}_{name}.npy", predict(model, config))
            model.save(folder / f"{backend}_{name}.keras")
        else:
            for path in sorted(folder.glob(f"*_{name}.keras")):
                other = path.name.split("_")[0]
                if other != backend:
                    model = keras.saving.load_model(path, safe_mode=True)
                    out = folder / f"{backend}_from_{other}_{name}.npy"
                    np.save(out, predict(model, config))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
