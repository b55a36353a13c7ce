"""Phantom chest CT with lung tumors, written in the Medical Segmentation Decathlon Task06 layout.

`write_synthetic_dataset` writes `dataset.json`, `imagesTr/lung_XXX.nii.gz` (int16 Hounsfield
units) and `labelsTr/lung_XXX.nii.gz` (uint8, 1 = tumor), so `prepare msd` and everything after
it run with no download. Each case draws its own anatomy from a seeded generator: body outline
with fat and muscle, two lungs with branching vessels (soft-tissue blobs and tubes that look like
small tumors), heart and aorta, spine and ribs, then 0 to 3 lobulated tumors of about 5 to 70 mm
(median 24 mm, about a third of them on the lung wall) and Gaussian noise. Volumes are stored
the way DICOM-derived NIfTI files usually are: voxel axes towards the patient's left, posterior and
superior, with the matching affine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import UserError, check_range
from ..files import check_output_folder, refuse_overwriting, staged, write_text
from ..progress import track
from .cases import MAX_SEED
from .nifti import write_volume

HU = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 45.0,
    "lung": -850.0,
    "vessel": 50.0,
    "contrast": 160.0,
    "marrow": 250.0,
    "bone": 800.0,
    "canal": 15.0,
}
TUMOR_COUNT_P = (0.05, 0.50, 0.30, 0.15)  # 0, 1, 2, 3 tumors: nearly every case has one
VESSEL_SIGMA_MM, VESSEL_RADIUS_MM = 1.6, 2.8
# Outer tumor diameters: log-normal, kept to 7-85 mm. Lobulated, a tumor's largest cross-section
# then measures (as the diameter of a disk of its area) 5 to 70 mm, median 24 mm, 10% under 13 mm:
# about what the tumors of real MSD Task06 slices measure (roughly 10 to 65 mm, median 20-25).
TUMOR_MEDIAN_MM, TUMOR_LOG_SD, TUMOR_RANGE_MM = 32.0, 0.5, (7.0, 85.0)
# Making a case takes about 35 bytes of memory per voxel; its two .nii.gz files take about 1.2
# bytes per voxel on disk (the noise does not compress). Measured at 128 and 256 pixels.
MAX_CASES, MAX_VOXELS, DISK_BYTES_PER_VOXEL = 10_000, 2**27, 1.3


def write_synthetic_dataset(
    output: Path,
    cases: int = 12,
    seed: int = 42,
    size: int = 256,
    slices: int = 48,
    *,
    overwrite: bool = False,
) -> list[str]:
    """Write `cases` phantom CT volumes of size x size x slices voxels; return their case ids.

    Case ids are "001", "002", ... (files `lung_001.nii.gz`, ...). Each case has its own
    generator seeded with (seed, case index): the same seed gives the same bytes, and adding
    cases leaves the earlier ones unchanged. About 95% of cases hold 1 to 3 tumors, the rest
    none, so every train/valid/test split gets tumor slices. The field of view is 300-360 mm
    (1.2-1.4 mm pixels at size 256) and slices are 2-3 mm thick. Size is 32 to 1024 and slices
    4 to 1024, cases 1 to 10000, a case at most 2**27 voxels (about 5 GB of memory while it is
    made; size 1024 with 48 slices takes about 2 GB), and the set must fit on the disk: all
    checked before anything is written. Any file it would write that is already there is
    refused unless `overwrite`.
    """
    output = Path(output)
    _check_settings(output, cases, seed, size, slices)
    ids = [f"{index:03d}" for index in range(1, cases + 1)]
    volumes = [f"{kind}/lung_{case}.nii.gz" for case in ids for kind in ("imagesTr", "labelsTr")]
    refuse_overwriting(output, ["dataset.json", *volumes], overwrite)
    with staged(output) as staging:  # an error or Ctrl-C leaves no partial set in `output`
        for folder in ("imagesTr", "labelsTr"):
            (staging / folder).mkdir()
        for index, case in enumerate(track(ids, "synthetic CT", total=cases)):
            image, label, affine = phantom_case(np.random.default_rng([seed, index]), size, slices)
            write_volume(staging / "imagesTr" / f"lung_{case}.nii.gz", image, affine)
            write_volume(staging / "labelsTr" / f"lung_{case}.nii.gz", label, affine)
        text = json.dumps(_dataset_json(ids), indent=4) + "\n"
        write_text(staging / "dataset.json", text)
    return ids


def _check_settings(output: Path, cases: int, seed: int, size: int, slices: int) -> None:
    """Refuse settings out of range, a case too large to make in memory, a set too large for
    the disk, and a file in the way of the output's folders."""
    check_range("--cases", cases, 1, MAX_CASES)
    check_range("--seed", seed, 0, MAX_SEED)
    check_range("--size", size, 32, 1024)
    check_range("--slices", slices, 4, 1024)
    voxels = size * size * slices
    if voxels > MAX_VOXELS:
        raise UserError(f"--size {size} with --slices {slices}: {voxels} voxels a case, more than "
                        f"{MAX_VOXELS} (about 5 GB of memory to make one); lower either")
    check_output_folder(output, ("imagesTr", "labelsTr"))
    folder = next(path for path in (output.absolute(), *output.absolute().parents)
                  if path.exists())
    need, free = cases * voxels * DISK_BYTES_PER_VOXEL / 1e9, shutil.disk_usage(folder).free / 1e9
    if need > free:
        raise UserError(f"--cases {cases} of {size}x{size}x{slices} voxels need about {need:.0f} "
                        f"GB on disk, but {folder} has {free:.0f} GB free; lower --cases, --size "
                        "or --slices")


def phantom_case(
    rng: np.random.Generator, size: int, slices: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One phantom: (int16 HU volume, uint8 tumor label, affine), arrays indexed (L, P, S)."""
    spacing = float(rng.uniform(300.0, 360.0)) / size
    thickness = float(rng.choice([2.0, 2.5, 3.0]))
    # Display grid, in field-of-view units: y grows posterior (down), x to the patient's left.
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)[:, None] / size - 0.5
    t = np.linspace(0.0, 1.0, slices, dtype=np.float32)[:, None, None]  # inferior -> superior
    hu = np.full((slices, size, size), HU["air"], np.float32)
    lungs = _paint_anatomy(rng, hu, y, x, t)
    voxel_mm = (thickness, spacing, spacing)
    vessels = _vessels(rng, lungs, voxel_mm) & lungs
    hu[vessels] = HU["vessel"]
    label = np.zeros(hu.shape, np.uint8)
    chest = lungs | (hu > HU["fat"] + 50.0)  # lungs, muscle, organs, bone: no fat or air
    for _ in range(rng.choice(4, p=TUMOR_COUNT_P)):
        tumor = _tumor(rng, lungs, voxel_mm) & chest
        label[tumor] = 1
        hu[tumor] = float(rng.uniform(20.0, 50.0))
    hu = ndimage.gaussian_filter(hu, sigma=(0.0, 0.6, 0.6))
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * float(rng.uniform(12.0, 22.0))
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    affine = np.diag([-spacing, -spacing, thickness, 1.0])
    affine[:3, 3] = [spacing * (size - 1) / 2, spacing * (size - 1) / 2, -thickness * slices / 2]
    # (slice, row, column) -> (column, row, slice): voxel axes towards the patient's left,
    # posterior and superior, as in NIfTI files converted from DICOM.
    return image.transpose(2, 1, 0), label.transpose(2, 1, 0), affine


def _paint_anatomy(rng, hu, y, x, t) -> np.ndarray:
    """Paint body, fat, ribs, heart, aorta, spine and lungs into `hu`; return the lung mask."""

    def u(low, high):
        return float(rng.uniform(low, high))

    cy, cx = u(0.02, 0.05), u(-0.015, 0.015)
    ry, rx = u(0.27, 0.32), u(0.39, 0.44)
    taper = 1.0 - 0.06 * t  # the chest narrows towards the top
    rho, theta, edge = _shape(y, x, cy, cx, ry, rx, _wobble(rng, 0.02), taper)
    fat = u(0.06, 0.12)
    _paint(hu, rho < edge, HU["fat"])
    _paint(hu, rho < edge - fat, HU["muscle"])
    wall = rho - (edge - fat)  # < 0 inside the muscle layer
    turns, phase = int(rng.integers(14, 19)), u(0, 2 * np.pi)
    stripes = np.cos(turns * theta + 2 * np.pi * u(0.8, 1.6) * t + phase) > 0.55
    not_front = np.abs(theta + np.pi / 2) > 0.45  # no ribs at the sternum
    _paint(hu, (wall > -0.05) & (wall < -0.02) & stripes & not_front, HU["bone"])

    spine_y, spine_r = cy + u(0.13, 0.15), u(0.038, 0.048)
    lungs = np.zeros(hu.shape, bool)
    for side in (-1.0, 1.0):  # the patient's right (image left), then left
        lung_rho, _, lung_edge = _shape(
            y,
            x,
            cy - u(0.0, 0.03),
            cx + side * u(0.15, 0.18),
            ry * u(0.62, 0.72),
            rx * u(0.28, 0.34),
            _wobble(rng, 0.04),
            taper * _apex(rng, t),
        )
        lungs |= lung_rho < lung_edge
    lungs &= wall < -0.06
    heart_size = np.clip(1.25 - 1.3 * t, 0.3, 1.0)  # the heart sits low in the chest
    heart_y, heart_x = cy - u(0.02, 0.06), cx + u(0.02, 0.05)
    heart = _disk(y, x, heart_y, heart_x, 0.14 * heart_size, 0.13 * heart_size)
    middle = _disk(y, x, cy, cx, 0.27, 0.045)
    lungs &= ~(heart | middle | _disk(y, x, spine_y, cx, 1.6 * spine_r, 1.6 * spine_r))
    _paint(hu, lungs, HU["lung"] + 40.0 * (y - cy) / ry)  # denser towards the back
    _paint(hu, heart | middle, HU["muscle"])
    _paint(hu, _disk(y, x, spine_y - spine_r - 0.03, cx + 0.045, 0.025, 0.025), HU["contrast"])
    _paint(hu, _disk(y, x, cy - 0.1, cx + 0.01, 0.03, 0.03) & (t > 0.5), HU["contrast"])

    vertebra = np.hypot(y - spine_y, x - cx) / spine_r
    canal = np.hypot(y - spine_y - spine_r - 0.025, x - cx) / 0.02
    _paint(hu, vertebra < 1.0, HU["bone"])
    _paint(hu, vertebra < 0.8, HU["marrow"])
    _paint(hu, (canal < 1.7) & (vertebra > 1.0), HU["bone"])
    _paint(hu, canal < 1.0, HU["canal"])
    return lungs


def _paint(hu, where, value) -> None:
    """Set `hu` to `value` where `where` holds (both broadcast against the volume)."""
    np.copyto(hu, value, where=where)


def _shape(y, x, cy, cx, ry, rx, wobble, scale=1.0):
    """Ellipse with a wobbly outline: (normalised radius, angle, outline radius at that angle).

    `scale` (per slice) grows or shrinks the shape without changing angles, so the costly
    outline stays 2D.
    """
    dy, dx = (y - cy) / ry, (x - cx) / rx
    theta = np.arctan2(dy, dx)
    edge = 1.0 + sum(a * np.cos(k * theta + p) for k, (a, p) in enumerate(wobble, start=2))
    return np.hypot(dy, dx) / scale, theta, edge


def _disk(y, x, cy, cx, ry, rx) -> np.ndarray:
    return np.hypot((y - cy) / ry, (x - cx) / rx) < 1.0


def _wobble(rng, amplitude) -> list[tuple[float, float]]:
    """Amplitudes and phases of harmonics 2, 3, 4 of an outline."""
    return [(float(rng.uniform(0, amplitude)), float(rng.uniform(0, 2 * np.pi))) for _ in range(3)]


def _apex(rng, t) -> np.ndarray:
    """Lung size along the body axis: largest low in the chest, smaller towards the apex."""
    centre, width = float(rng.uniform(0.3, 0.45)), float(rng.uniform(0.8, 1.0))
    return np.sqrt(np.clip(1.0 - ((t - centre) / width) ** 2, 0.2, 1.0))


def _vessels(rng, lungs, voxel_mm) -> np.ndarray:
    """Branching vessel trees from each hilum: tubes of 6 mm thinning to 2-3 mm, as a mask."""
    voxel_mm = np.asarray(voxel_mm)
    density = np.zeros(lungs.shape, np.float32)
    size = lungs.shape[1]
    for side in (slice(0, size // 2), slice(size // 2, size)):
        points = np.argwhere(lungs[:, :, side]) + [0, 0, side.start]
        if len(points) == 0:
            continue
        medial = np.percentile(points[:, 2], 90 if side.start == 0 else 10)
        target = [points[:, 0].mean(), points[:, 1].mean(), medial]
        hilum = points[np.argmin(np.abs(points - target).sum(axis=1))]
        starts = [(hilum, 1.0)]
        for _ in range(int(rng.integers(40, 60))):
            start, weight = starts[rng.integers(len(starts))]
            end = points[rng.integers(len(points))]
            stop = weight * float(rng.uniform(0.45, 0.7))
            _add_segment(density, start, end, weight, stop, voxel_mm)
            fraction = float(rng.uniform(0.3, 0.7))
            branch = weight + fraction * (stop - weight)
            if branch > 0.4:
                starts.append((start + fraction * (end - start), branch))
    smooth = ndimage.gaussian_filter(density, sigma=VESSEL_SIGMA_MM / voxel_mm)
    sigma2 = VESSEL_SIGMA_MM**2
    return smooth > np.exp(-(VESSEL_RADIUS_MM**2) / (2 * sigma2)) / (2 * np.pi * sigma2)


def _add_segment(density, start, end, weight, stop, voxel_mm) -> None:
    """Add a line from start to end (voxel indices), weights tapering, as line density per mm."""
    steps = int(np.ceil(np.abs(np.subtract(end, start)).max() / 0.4)) + 1
    f = np.linspace(0.0, 1.0, steps)[:, None]
    points = np.rint(start + f * np.subtract(end, start)).astype(int)
    step_mm = float(np.linalg.norm((np.subtract(end, start)) * voxel_mm)) / steps
    weights = (weight + f[:, 0] * (stop - weight)) * step_mm / float(np.prod(voxel_mm))
    np.add.at(density, tuple(points.T), weights.astype(np.float32))


def _tumor(rng, lungs, voxel_mm) -> np.ndarray:
    """A lobulated blob of 5-70 mm centred in a lung, a third of them on the lung wall."""
    diameter = float(np.clip(rng.lognormal(np.log(TUMOR_MEDIAN_MM), TUMOR_LOG_SD), *TUMOR_RANGE_MM))
    radius = diameter / 2
    candidates = lungs
    if rng.random() < 0.35:
        candidates = lungs & ~ndimage.binary_erosion(lungs, structure=np.ones((1, 3, 3), bool))
    points = np.argwhere(candidates)
    blob = np.zeros(lungs.shape, bool)
    if len(points) == 0:
        return blob
    centre = points[rng.integers(len(points))]
    reach = np.ceil(1.3 * radius / np.asarray(voxel_mm)).astype(int)
    low, high = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, lungs.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    mm = [(np.arange(a, b) - c) * s for a, b, c, s in zip(low, high, centre, voxel_mm, strict=True)]
    dz, dy, dx = np.meshgrid(*mm, indexing="ij", sparse=True)
    lobes = [(np.zeros(3), radius * rng.uniform(0.6, 0.8))]
    for _ in range(int(rng.integers(2, 6))):
        direction = rng.standard_normal(3)
        offset = direction / np.linalg.norm(direction) * radius * rng.uniform(0.35, 0.7)
        lobes.append((offset, radius * rng.uniform(0.35, 0.6)))
    for (oz, oy, ox), r in lobes:
        blob[box] |= (dz - oz) ** 2 + (dy - oy) ** 2 + (dx - ox) ** 2 < r**2
    return blob


def _dataset_json(ids: list[str]) -> dict:
    """A dataset.json shaped like the Decathlon's Task06_Lung one."""
    return {
        "name": "Lung",
        "description": "Synthetic phantom chest CT with lung tumors (flexunet-k3); no patient data",
        "reference": "flexunet-k3 prepare synthetic",
        "licence": "CC0-1.0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "cancer"},
        "numTraining": len(ids),
        "numTest": 0,
        "training": [
            {"image": f"./imagesTr/lung_{case}.nii.gz", "label": f"./labelsTr/lung_{case}.nii.gz"}
            for case in ids
        ],
        "test": [],
    }
