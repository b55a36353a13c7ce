"""FlexUNet: the original TensorFlowFlexUNet architecture in Keras 3 (keras.layers only)."""

from __future__ import annotations

import keras
from keras import layers

from flexunet_k3.config import ModelConfig


def _conv_block(x, level: dict, config: ModelConfig, name: str):
    """Conv-(BN)-Dropout-Conv-(BN), as in the original."""
    for j in (1, 2):
        x = layers.Conv2D(
            level["filters"],
            level["kernel_size"],
            dilation_rate=level["dilation_rate"],
            padding="same",
            activation=config.activation,
            kernel_initializer="he_normal",
            name=f"{name}_conv{j}",
        )(x)
        if config.normalization:
            x = layers.BatchNormalization(
                momentum=config.normalization_momentum, name=f"{name}_bn{j}"
            )(x)
        if j == 1:
            x = layers.Dropout(level["dropout"], name=f"{name}_dropout")(x)
    return x


def build_flexunet(config: ModelConfig, any_size: bool = False) -> keras.Model:
    """The UNet of the README's "The model"; the output is float32 under mixed precision.
    `any_size`: its input takes any height and width divisible by 2**(num_layers-1)."""
    size = (None, None) if any_size else (config.image_height, config.image_width)
    inputs = keras.Input((*size, config.image_channels), name="image")
    x = inputs
    if config.input_normalize:
        x = layers.Rescaling(1.0 / 255.0, name="input_normalize")(x)
    schedule = config.levels()
    skips = []
    for i, level in enumerate(schedule):
        x = _conv_block(x, level, config, name=f"enc{i}")
        if i < config.num_layers - 1:
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"enc{i}_pool")(x)
    for i in range(config.num_layers - 2, -1, -1):
        level = schedule[i]
        x = layers.Conv2DTranspose(
            level["filters"],
            2,
            strides=2,
            padding="same",
            kernel_initializer="he_normal",
            name=f"dec{i}_up",
        )(x)
        x = layers.Concatenate(name=f"dec{i}_concat")([x, skips[i]])
        x = _conv_block(x, level, config, name=f"dec{i}")
    final = config.final_activation
    if final == "auto":
        final = "softmax" if config.num_classes > 1 else "sigmoid"
    x = layers.Conv2D(config.num_classes, 1, padding="same", name="logits")(x)
    outputs = layers.Activation(final, dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="flexunet")
