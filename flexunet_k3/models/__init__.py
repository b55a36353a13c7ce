"""Model registry: architectures by name. Importing this module does not import keras."""

from __future__ import annotations

from collections.abc import Callable

from flexunet_k3.config import ModelConfig
from flexunet_k3.errors import UserError


def _flexunet(config: ModelConfig):
    from flexunet_k3.models.flexunet import build_flexunet

    return build_flexunet(config)


MODELS: dict[str, Callable] = {"flexunet": _flexunet}


def build_model(config: ModelConfig):
    """Build the keras.Model named by `config.name`."""
    try:
        builder = MODELS[config.name]
    except KeyError:
        raise UserError(
            f"model.name: unknown architecture {config.name!r}; known: {', '.join(MODELS)}"
        ) from None
    return builder(config)
