"""Build the architecture a config names (flexunet_k3.architectures lists them)."""

from __future__ import annotations

import importlib

from flexunet_k3.architectures import ARCHITECTURES
from flexunet_k3.config import ModelConfig


def build_model(config: ModelConfig, any_size: bool = False):
    """Build the keras.Model named by `config.name` (checked by ModelConfig); `any_size`: one
    whose input takes any image size the levels divide (for training on crops)."""
    module, function = ARCHITECTURES[config.name].split(":")
    return getattr(importlib.import_module(module), function)(config, any_size)
