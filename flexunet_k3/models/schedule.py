"""The FlexUNet level schedule, shared by the Keras model and the plain-PyTorch reference."""

from __future__ import annotations

from flexunet_k3.config import ModelConfig


def level_schedule(config: ModelConfig) -> list[dict]:
    """Filters, kernel size, dilation and dropout rate of each level, top (0) to bottom
    (ModelConfig.levels, which also counts the weights from it)."""
    return config.levels()
