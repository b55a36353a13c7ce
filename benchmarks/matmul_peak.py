"""The device's measured matrix-product peak, to set achieved TFLOP/s against (PyTorch).

    python benchmarks/matmul_peak.py [--size 8192] [--json peak.json]

Times square matrix products of random data in bfloat16, float16 and float32 (TF32 off) on the
GPU if there is one, else on the CPU (at a smaller default size): the mean of 10 products after
3 warm-ups, 2 * size**3 FLOP each.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def peak_tflops(size: int, dtype: torch.dtype, device: str, repeats: int = 10) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    return 2 * size**3 / seconds / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, help="matrix side [8192 on a GPU, 2048 on CPU]")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = args.size or (8192 if device == "cuda" else 2048)
    torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    figures = {"device": name, "size": size}
    for label, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16),
                         ("float32", torch.float32)):
        figures[f"{label}_tflops"] = round(peak_tflops(size, dtype, device), 2)
        print(f"{name}: {label} {size}x{size} matrix product {figures[f'{label}_tflops']} TFLOP/s",
              flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
