"""Volume inference against `flexunet benchmark`'s infer img/s, and its peak host memory.

    python benchmarks/volume_inference.py --config configs/cpu-benchmark.yaml \
        --backend tensorflow --slices 64 --memory-slices 300,600

One run, side by side: `flexunet benchmark` (predict_on_batch on one in-memory batch of the
config's model and train.batch_size), then, in fresh processes with the same model (untrained
weights) and batch:
- speed: `segment_volume` on a 512x512 x SLICES int16 CT volume in memory (windowing, resizing
  to the model and back, argmax and stacking included), after one warm-up batch; the median of
  3 runs, as the benchmark reports the median of its prediction times;
- memory: `infer_volumes` from a .nii.gz on disk to a label .nii.gz, per slice count, with the
  process's peak RSS (ru_maxrss), against a process that only builds the model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IN_PLANE = 512
REPEATS = 3  # the median, as the benchmark takes the median of its prediction times


def volume(slices: int) -> np.ndarray:
    """A CT-like int16 volume (noise around soft tissue and air) in Fortran order, as nibabel
    reads NIfTI voxels."""
    rng = np.random.default_rng(0)
    return np.asfortranarray(rng.integers(-1000, 400, (IN_PLANE, IN_PLANE, slices), np.int16))


def worker(args) -> None:
    """Runs under the chosen backend; prints one JSON line."""
    from flexunet_k3.config import load_config
    from flexunet_k3.data.nifti import Volume
    from flexunet_k3.model_io import compile_model
    from flexunet_k3.training import set_up_process
    from flexunet_k3.volume_inference import infer_volumes, segment_volume, volumes_at

    config = load_config(args.config)
    config.infer.batch_size = config.train.batch_size
    set_up_process(config, config.train.precision)
    model = compile_model(config)
    result = {}
    if args.worker == "speed":
        import nibabel as nib

        data = volume(args.slices)
        affine = np.diag([0.7, 0.7, 2.5, 1.0])
        ct = Volume(data, affine, nib.Nifti1Image(data, affine).header, "ct")
        warm = Volume(data[:, :, : config.infer.batch_size], affine, ct.header, "warm-up")
        segment_volume(model, warm, config, (-125.0, 225.0))
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            segment_volume(model, ct, config, (-125.0, 225.0))
            times.append(time.perf_counter() - start)
        result["slices_per_s"] = args.slices / float(np.median(times))
    elif args.worker == "memory":
        output = Path(args.file).parent / "out"
        infer_volumes(model, config, volumes_at(Path(args.file)), output, window=(-125.0, 225.0))
    result["peak_host_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result), flush=True)


def child(args, *extra: str) -> dict:
    command = [sys.executable, __file__, "--config", args.config, "--backend", args.backend,
               *extra]
    env = {**os.environ, "KERAS_BACKEND": args.backend}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--backend", default="tensorflow")
    parser.add_argument("--slices", type=int, default=64, help="slices of the speed volume")
    parser.add_argument("--memory-slices", default="300,600", help="'' to skip")
    parser.add_argument("--worker", choices=["speed", "memory", "model"], help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import nibabel as nib

    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "benchmark.json"
        subprocess.run(["flexunet", "--quiet", "benchmark", "--config", args.config,
                        "--backends", args.backend, "--json", str(report)],
                       check=True, capture_output=True)
        infer = json.loads(report.read_text())["rows"][0]["infer_images_per_s"]
        speed = child(args, "--worker", "speed", "--slices", str(args.slices))["slices_per_s"]
        print(f"{args.backend}: benchmark infer {infer:.2f} img/s, volume inference "
              f"{speed:.2f} slices/s ({IN_PLANE}x{IN_PLANE}x{args.slices}): {speed / infer:.2f}x")
        baseline = child(args, "--worker", "model")["peak_host_mb"]
        print(f"model alone: peak host {baseline:,.0f} MB")
        for slices in (int(n) for n in args.memory_slices.split(",") if n):
            path = Path(folder) / str(slices) / "ct.nii.gz"
            path.parent.mkdir()
            nib.save(nib.Nifti1Image(volume(slices), np.diag([0.7, 0.7, 2.5, 1.0])), path)
            peak = child(args, "--worker", "memory", "--file", str(path))["peak_host_mb"]
            print(f"{slices} slices ({IN_PLANE * IN_PLANE * slices * 2 / 2**20:,.0f} MB of "
                  f"int16 voxels): peak host {peak:,.0f} MB, {peak - baseline:,.0f} MB above "
                  "the model alone")


if __name__ == "__main__":
    main()
