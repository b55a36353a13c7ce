"""Run under one backend (KERAS_BACKEND) by test_parity.py, the three backends at once:
`python parity_worker.py DIR`.

For each small config, build the model, give it deterministic numpy weights, predict a fixed
input, save `{backend}_{name}.npy` and `{backend}_{name}.keras` (whole files only: written
under another name, then renamed). Then wait for the other backends' `.keras` files, load
each (safe_mode) and save its prediction as `{backend}_from_{other}_{name}.npy`.
"""

import sys
import time
from pathlib import Path

import keras
import numpy as np

from flexunet_k3.backend import BACKENDS
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


def main(folder: Path) -> None:
    backend = keras.backend.backend()
    for name, config in CONFIGS.items():
        model = build_model(config)
        model.set_weights(numpy_weights(model))
        np.save(folder / f"{backend}_{name}.npy", predict(model, config))
        model.save(folder / f"{backend}_{name}.partial.keras")
        (folder / f"{backend}_{name}.partial.keras").rename(folder / f"{backend}_{name}.keras")
    others = [other for other in BACKENDS if other != backend]
    deadline = time.monotonic() + 500
    while not all((folder / f"{other}_{name}.keras").exists()
                  for other in others for name in CONFIGS):
        if time.monotonic() > deadline:
            sys.exit(f"{backend}: the other backends' models did not come")
        time.sleep(0.2)
    for other in others:
        for name, config in CONFIGS.items():
            model = keras.saving.load_model(folder / f"{other}_{name}.keras", safe_mode=True)
            np.save(folder / f"{backend}_from_{other}_{name}.npy", predict(model, config))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
