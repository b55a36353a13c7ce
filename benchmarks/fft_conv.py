"""Would FFT convolution make float32 training faster here? One 9x9 layer, TensorFlow, CPU.

Times forward and forward+backward of a 'same' 9x9 convolution at 256x256, batch 4, computed
directly (oneDNN, what Keras runs) and through real FFTs (zero-padded to N, channel mixing per
frequency), in float32.

    python benchmarks/fft_conv.py [--channels-in 16] [--channels-out 16] [--fft-size 270]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

BATCH, SIZE, KERNEL = 4, 256, 9


def direct(x, kernel, fft_size):
    return tf.nn.conv2d(x, kernel, 1, "SAME")


def via_fft(x, kernel, fft_size):
    """Keras' Conv2D (a cross-correlation with 'same' padding) as products of real FFTs."""
    half, tail = KERNEL // 2, fft_size - SIZE - KERNEL // 2
    planes = tf.pad(tf.transpose(x, (0, 3, 1, 2)), [[0, 0], [0, 0], [half, tail], [half, tail]])
    kernels = tf.pad(tf.transpose(kernel, (2, 3, 0, 1)),
                     [[0, 0], [0, 0], [0, fft_size - KERNEL], [0, fft_size - KERNEL]])
    mixed = tf.einsum("bcij,coij->boij", tf.signal.rfft2d(planes),
                      tf.math.conj(tf.signal.rfft2d(kernels)))
    y = tf.signal.irfft2d(mixed, fft_length=[fft_size, fft_size])[:, :, :SIZE, :SIZE]
    return tf.transpose(y, (0, 2, 3, 1))


def median_ms(function, repeats: int = 5) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        [np.asarray(result) for result in tf.nest.flatten(function())]
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels-in", type=int, default=16)
    parser.add_argument("--channels-out", type=int, default=16)
    parser.add_argument("--fft-size", type=int, default=270, help=">= 264; 2^a 3^b 5^c is fast")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = tf.Variable(rng.normal(size=(BATCH, SIZE, SIZE, args.channels_in)).astype("float32"))
    kernel = tf.Variable(0.05 * rng.normal(
        size=(KERNEL, KERNEL, args.channels_in, args.channels_out)).astype("float32"))
    gap = np.abs(direct(x, kernel, 0) - via_fft(x, kernel, args.fft_size)).max()
    print(f"{args.channels_in}->{args.channels_out} channels, FFT size {args.fft_size}: "
          f"largest difference {gap:.2g}")
    for name, conv in (("direct", direct), ("fft", via_fft)):
        def step(conv=conv):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(conv(x, kernel, args.fft_size) ** 2)
            return tape.gradient(loss, [x, kernel])

        forward = median_ms(tf.function(lambda conv=conv: conv(x, kernel, args.fft_size)))
        print(f"{name:6}  forward {forward:6.0f} ms   forward+backward "
              f"{median_ms(tf.function(step)):6.0f} ms")


if __name__ == "__main__":
    main()
