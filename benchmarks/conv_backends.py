"""One convolution, forward and backward, timed in each backend's own library (no Keras).

    python benchmarks/conv_backends.py                  # the model's first level at 256x256
    XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/conv_backends.py

The FlexUNet's time on CPU is mostly its convolutions, so this tells whether a backend's gap
comes from its convolution kernels (XLA:CPU's for JAX, oneDNN's for TensorFlow and PyTorch) or
from what Keras adds around them. Default shape: batch 4, 256x256, 16 -> 16 channels, 9x9.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def timed(step, repeats: int) -> float:
    """Median seconds of `step()` after two warm-up calls."""
    step()
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def jax_step(x, w):
    import jax

    def loss(x, w):
        y = jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return (y * y).sum()

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    x, w = jax.numpy.asarray(x), jax.numpy.asarray(w)
    return lambda: [g.block_until_ready() for g in grad(x, w)]


def tensorflow_step(x, w):
    import tensorflow as tf

    x, w = tf.Variable(x), tf.Variable(w)

    @tf.function
    def grad():
        with tf.GradientTape() as tape:
            y = tf.nn.conv2d(x, w, 1, "SAME")
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x, w])

    return lambda: [g.numpy() for g in grad()]


def torch_step(x, w):
    import torch

    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
    tx.requires_grad_(True)
    tw.requires_grad_(True)

    def step():
        y = torch.nn.functional.conv2d(tx, tw, padding="same")
        (y * y).sum().backward()
        tx.grad = tw.grad = None

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=5, default=[4, 256, 256, 16, 16],
                        metavar=("BATCH", "H", "W", "CIN", "COUT"))
    parser.add_argument("--kernel", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    batch, height, width, cin, cout = args.shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, height, width, cin), dtype=np.float32)
    w = rng.standard_normal((args.kernel, args.kernel, cin, cout), dtype=np.float32)
    gflop = 3 * 2 * batch * height * width * cin * cout * args.kernel**2 / 1e9
    for name, make in (("jax", jax_step), ("tensorflow", tensorflow_step), ("torch", torch_step)):
        seconds = timed(make(x, w), args.repeats)
        rate = gflop / seconds
        print(f"{name:10s} forward+backward {1000 * seconds:8.1f} ms  {rate:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
