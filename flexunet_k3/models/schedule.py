"""The FlexUNet level schedule, shared by the Keras model and the plain-PyTorch reference."""

from __future__ import annotations

from flexunet_k3.config import ModelConfig


def level_schedule(config: ModelConfig) -> list[dict]:
    """Filters, kernel size, dilation and dropout rate of each level, top (0) to bottom."""
    schedule = []
    for i in range(config.num_layers):
        kernel = tuple(max(k - 2 * i, min(k, 3)) for k in config.base_kernels)
        dilation = tuple(max(d - i, 1) for d in config.dilation)
        schedule.append(
            {
                "filters": config.base_filters * 2**i,
                "kernel_size": kernel,
                "dilation_rate": dilation,
                "dropout": config.dropout_rate * i,
            }
        )
    return schedule
