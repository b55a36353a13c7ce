"""Model registry: architectures by name. Importing this module does not import keras."""

from __future__ import annotations

from collections.abc import Callable

from flexunet_k3.config import ModelConfig


def _flexunet(config: ModelConfig):
    from flexunet_k3.models.flexunet import build_flexunet

    return build_flexunet(config)


MODELS: dict[str, Callable] = {"flexunet": _flexunet}


def build_model(config: ModelConfig):
    """Build the keras.Model named by `config.name` (checked by ModelConfig)."""
    return MODELS[config.name](config)
