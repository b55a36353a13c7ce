"""Whole-volume surface scores: time and peak memory of `score_volume` (k-d tree distances)
against the distance transform over the box that MONAI uses, side by side in one run.

    python benchmarks/volume_scores.py --slices 200

The volume: a 512x512xSLICES CT grid (0.7 x 0.7 x 1.5 mm) with a 60x50x70-voxel tumor in
truth and prediction, and the prediction with N stray voxels in far corners (0, 2, 50). Each
method scores it in a fresh process (peak RSS, ru_maxrss) and both must give the same HD95 and
surface Dice.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
from scipy import ndimage

SPACING = (0.7, 0.7, 1.5)


def volumes(slices: int, strays: int) -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((512, 512, slices), np.uint8)
    truth[200:260, 200:250, slices // 4 : slices // 4 + 70] = 1
    pred = np.roll(truth, 2, axis=0)
    corners = np.random.default_rng(0).integers(0, [512, 512, slices], size=(strays, 3))
    pred[tuple(corners.T)] = 1
    return truth, pred


def distance_transform_scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """HD95 and surface Dice as before: distance_transform_edt over the union's box."""
    from flexunet_k3.volume_scores import border_voxels, foreground_box

    box = foreground_box(truth | pred)
    truth, pred = truth[box], pred[box]
    truth_border, pred_border = border_voxels(truth), border_voxels(pred)
    both = [ndimage.distance_transform_edt(~to, sampling=SPACING)[source]
            for source, to in ((pred_border, truth_border), (truth_border, pred_border))]
    within = sum(np.count_nonzero(d <= 1.0) for d in both)
    return {"hd95": float(max(np.percentile(d, 95) for d in both)),
            "surface_dice": float(within / sum(d.size for d in both))}


def measure(method: str, slices: int, strays: int) -> dict:
    from flexunet_k3.volume_scores import score_volume

    truth, pred = volumes(slices, strays)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if method == "kdtree":
        row = score_volume(truth, pred, 1, SPACING)
        scores = {key: row[key] for key in ("hd95", "surface_dice")}
    else:
        scores = distance_transform_scores(truth.astype(bool), pred.astype(bool))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method, "strays": strays, "seconds": round(seconds, 2),
            "peak_gb": round(peak / 2**20, 2),
            "above_inputs_gb": round((peak - baseline) / 2**20, 2), **scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--strays", default="0,2,50")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "STRAYS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker[0], args.slices, int(args.worker[1]))))
        return
    print("| stray voxels | method | seconds | peak RSS GB | above the inputs GB | HD95 mm | "
          "surface Dice |\n| --- | --- | --- | --- | --- | --- | --- |")
    for strays in args.strays.split(","):
        rows = []
        for method in ("distance_transform", "kdtree"):
            done = subprocess.run([sys.executable, __file__, "--slices", str(args.slices),
                                   "--worker", method, strays],
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout))
        for row in rows:
            print(f"| {strays} | {row['method']} | {row['seconds']} | {row['peak_gb']} | "
                  f"{row['above_inputs_gb']} | {row['hd95']:.4f} | {row['surface_dice']:.4f} |")
        assert np.allclose([rows[0]["hd95"], rows[0]["surface_dice"]],
                           [rows[1]["hd95"], rows[1]["surface_dice"]], atol=1e-6), rows


if __name__ == "__main__":
    main()
