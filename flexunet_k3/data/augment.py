"""Online augmentation of (image, mask) pairs (numpy + scipy + Pillow, no keras).

Flips, rotation, shrink and shear are composed into one affine map about the image center;
an elastic displacement is added at the nodes of a mesh; Pillow then warps the image
(bilinear) and the mask (nearest, so class ids stay valid) through the same mesh, once each.
Uncovered areas become 0 in both (background). Brightness and contrast touch the image only.
`random_crop` cuts the training windows of train.crop_size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from flexunet_k3.config import AugmentConfig

# Elastic mesh nodes lie 1.5 sigma apart (at least 8 px), the field bilinear in between: the
# smoothed field keeps about 1% of its power at that mesh's Nyquist frequency.
MESH_STEP_SIGMAS = 1.5
MIN_MESH_STEP = 8


class Augmenter:
    """Random transforms from an AugmentConfig; each one fires with `config.probability`."""

    def __init__(self, config: AugmentConfig, seed: int = 0):
        self.config = config
        self.seed = seed

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        """The generator for one sample in one epoch: same seed, same augmentation."""
        return np.random.default_rng([self.seed, epoch, index])

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        """Augment a uint8 (H, W, C) image and its uint8 (H, W) labels alike."""
        height, width = labels.shape
        inverse = self._inverse_affine(rng)
        step = self._elastic_step(rng)
        if step or not np.array_equal(inverse, np.eye(2)):
            xs, ys = _nodes(width, step or width), _nodes(height, step or height)
            source = _affine_nodes(inverse, xs, ys)
            if step:
                source += self._elastic_offsets(rng, source.shape, step)
            mesh = _mesh(xs, ys, source)
            image = _warp(image, mesh, Image.Resampling.BILINEAR)
            labels = _warp(labels, mesh, Image.Resampling.NEAREST)
        return self._intensity(image, rng), labels

    def _fires(self, rng: np.random.Generator) -> bool:
        return rng.random() < self.config.probability

    def _inverse_affine(self, rng: np.random.Generator) -> np.ndarray:
        """The 2x2 map from output to source offsets (about the center) of this draw."""
        cfg = self.config
        forward = np.eye(2)
        if cfg.hflip and self._fires(rng):
            forward = np.diag([-1.0, 1.0]) @ forward
        if cfg.vflip and self._fires(rng):
            forward = np.diag([1.0, -1.0]) @ forward
        if cfg.rotation_angles and self._fires(rng):
            angle = np.deg2rad(rng.choice(cfg.rotation_angles))  # counter-clockwise on screen
            cos, sin = np.cos(angle), np.sin(angle)
            forward = np.array([[cos, sin], [-sin, cos]]) @ forward
        if cfg.shrink_ratios and self._fires(rng):
            forward = rng.choice(cfg.shrink_ratios) * forward
        if cfg.shear > 0 and self._fires(rng):
            forward = np.array([[1.0, rng.uniform(-cfg.shear, cfg.shear)], [0.0, 1.0]]) @ forward
        return np.linalg.inv(forward)

    def _elastic_step(self, rng: np.random.Generator) -> int:
        """The mesh step when the elastic deformation fires this time, else 0."""
        cfg = self.config
        if cfg.elastic_alpha <= 0 or not self._fires(rng):
            return 0
        return max(MIN_MESH_STEP, round(MESH_STEP_SIGMAS * cfg.elastic_sigma))

    def _elastic_offsets(self, rng: np.random.Generator, shape, step: int) -> np.ndarray:
        """Simard's field (uniform noise, Gaussian-smoothed, times alpha) at the mesh nodes.

        Noise on a grid `step` times coarser, smoothed with sigma/step and scaled by 1/step,
        has the full-resolution field's correlation length and amplitude.
        """
        cfg = self.config
        noise = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
        sigma = cfg.elastic_sigma / step
        return ndimage.gaussian_filter(noise, (0, sigma, sigma)) * (cfg.elastic_alpha / step)

    def _intensity(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Brightness shift and contrast gain about the mean, applied as one lookup table."""
        cfg = self.config
        shift, gain = 0.0, 1.0
        if cfg.brightness and self._fires(rng):
            shift = 255 * rng.uniform(-cfg.brightness, cfg.brightness)
        if cfg.contrast and self._fires(rng):
            gain = 1 + rng.uniform(-cfg.contrast, cfg.contrast)
        if shift == 0.0 and gain == 1.0:
            return image
        mean = float(image.mean())
        lut = (np.arange(256, dtype=np.float32) - mean) * gain + mean + shift
        return np.take(np.clip(lut + 0.5, 0, 255).astype(np.uint8), image)


def random_crop(image: np.ndarray, labels: np.ndarray, size: int, foreground: float,
                rng: np.random.Generator):
    """A size x size window of an (H, W, C) image and its (H, W) labels, placed anywhere, or,
    with probability `foreground` and where the labels have any, to hold a random
    foreground pixel (nnU-Net's foreground oversampling)."""
    height, width = labels.shape
    rows, cols = np.nonzero(labels)
    if len(rows) and rng.random() < foreground:
        pick = rng.integers(len(rows))
        top = rng.integers(max(0, rows[pick] - size + 1), min(height - size, rows[pick]) + 1)
        left = rng.integers(max(0, cols[pick] - size + 1), min(width - size, cols[pick]) + 1)
    else:
        top, left = rng.integers(height - size + 1), rng.integers(width - size + 1)
    window = np.s_[top : top + size, left : left + size]
    return image[window], labels[window]


def _nodes(size: int, step: int) -> np.ndarray:
    """Mesh node positions along one axis: every `step` pixels, plus the far edge."""
    return np.append(np.arange(0, size, step), size)


def _affine_nodes(inverse: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """(2, len(ys), len(xs)) source coordinates of the nodes under the inverse affine map."""
    center = np.array([xs[-1], ys[-1]], dtype=np.float64)[:, None, None] / 2
    offsets = np.stack(np.meshgrid(xs, ys)) - center
    return np.einsum("ij,jyx->iyx", inverse, offsets) + center


def _mesh(xs: np.ndarray, ys: np.ndarray, source: np.ndarray) -> list:
    """Pillow MESH data: (output box, source quad NW, SW, SE, NE) for every cell."""
    boxes = np.stack(np.meshgrid(xs[:-1], ys[:-1]) + np.meshgrid(xs[1:], ys[1:]))
    nw, sw, se, ne = source[:, :-1, :-1], source[:, 1:, :-1], source[:, 1:, 1:], source[:, :-1, 1:]
    quads = np.concatenate([nw, sw, se, ne])
    boxes, quads = boxes.reshape(4, -1).T.tolist(), quads.reshape(8, -1).T.tolist()
    return [(tuple(box), quad) for box, quad in zip(boxes, quads, strict=True)]


def _warp(array: np.ndarray, mesh: list, resample: Image.Resampling) -> np.ndarray:
    """`array` (H, W) or (H, W, C) warped through the mesh, 0 where nothing maps."""
    img = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)
    warped = img.transform(img.size, Image.Transform.MESH, mesh, resample, fillcolor=0)
    return np.asarray(warped).reshape(array.shape)
