"""Inference: palette PNG masks named like their inputs at each input's size, overlays, mosaic."""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from flexunet_k3 import scores
from flexunet_k3.config import Config
from flexunet_k3.data.dataset import image_batches
from flexunet_k3.data.images import list_images, read_image, resize_image, resize_labels
from flexunet_k3.data.masks import labels_to_palette_image
from flexunet_k3.errors import UserError, first_line
from flexunet_k3.progress import track
from flexunet_k3.run_folder import staged

JIT = {"auto": "auto", "on": True, "off": False}  # train.jit -> keras' jit_compile
OVERLAY_ALPHA = 0.45
# Shown instead of gray class colors (a white tumor mask would vanish on a gray CT).
DISPLAY_COLORS = ((255, 40, 40), (40, 220, 40), (60, 120, 255), (255, 200, 0), (220, 0, 220))
MOSAIC_TILE = 192
MOSAIC_MAX_TILES = 16


def load_trained_model(path: Path, config: Config, *, compile: bool = False):
    """A model saved by `flexunet train` (safe mode), checked against the config's shapes."""

    if not path.is_file():
        raise UserError(f"{path}: no trained model here; run `flexunet train` first")
    model = _read_model_file(path, compile)
    expected = ((config.model.image_height, config.model.image_width,
                 config.model.image_channels), config.model.num_classes)
    found = _signature(model)
    if found != expected:
        raise UserError(
            f"{path}: this model takes {_describe(found)} but the config says "
            f"{_describe(expected)}; use the config the model was trained with"
        )
    return model if compile else _as_configured(model, config)


def _read_model_file(path: Path, compile: bool):
    """keras.saving.load_model, any failure a one-line UserError."""
    import keras

    if not zipfile.is_zipfile(path):  # Keras would say "File not found" of a truncated one
        reason = "not a whole .keras zip archive: truncated, or another kind of file"
    else:
        try:
            return keras.saving.load_model(path, compile=compile, safe_mode=True)
        except Exception as exc:  # a corrupt or foreign file fails in many ways
            reason = first_line(exc, typed=True)
    raise UserError(
        f"{path}: cannot load this model ({reason}); it is damaged or not a flexunet model: "
        "train again or point to another run"
    )


def _as_configured(model, config: Config):
    """`model` for prediction under the config's train.precision and train.jit.

    A saved model keeps the precision it was trained with; another one is built from the config
    under the asked precision and given the saved weights (stored in float32 either way).
    """
    import keras

    from flexunet_k3.models import build_model

    precision = config.train.precision
    first = next(layer for layer in model.layers if layer.weights)
    if first.dtype_policy.name != precision:
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(precision)
        try:
            rebuilt = build_model(config.model)
        finally:
            keras.mixed_precision.set_global_policy(previous)
        rebuilt.set_weights(model.get_weights())
        model = rebuilt
    if config.train.jit != "auto":  # "auto" stays Keras' choice per backend (no torch.compile)
        model.jit_compile = JIT[config.train.jit]
    return model


def _signature(model) -> tuple | None:
    """((height, width, channels), classes) of a one-input, one-output image model."""
    inputs, outputs = getattr(model, "inputs", None) or [], getattr(model, "outputs", None) or []
    if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
        return None
    return tuple(inputs[0].shape[1:]), outputs[0].shape[-1]


def _describe(signature: tuple | None) -> str:
    if signature is None:
        return "something other than one image in and one mask out"
    (height, width, channels), classes = signature
    return f"{height}x{width}x{channels} images and {classes} output classes"


def predict_labels(model, batch: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W) class ids for a float32 (B, H, W, C) batch."""
    probabilities = np.asarray(model.predict_on_batch(batch))
    return scores.predicted_labels(probabilities).astype(np.uint8)


def overlay_palette(colors) -> np.ndarray:
    """(C, 3) tint colors: the class colors, gray ones replaced by a display color."""
    return np.asarray([
        DISPLAY_COLORS[(class_id - 1) % len(DISPLAY_COLORS)] if len(set(color)) == 1 else color
        for class_id, color in enumerate(colors)
    ], np.float32)


def overlay(image: np.ndarray, labels: np.ndarray, colors, alpha: float = OVERLAY_ALPHA):
    """uint8 RGB: the image with each foreground class tinted (see `overlay_palette`)."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    tinted = rgb.astype(np.float32)
    palette = overlay_palette(colors)
    foreground = labels > 0
    tinted[foreground] = (1 - alpha) * tinted[foreground] + alpha * palette[labels[foreground]]
    return tinted.round().astype(np.uint8)


def mosaic(tiles: list[np.ndarray], tile: int = MOSAIC_TILE) -> np.ndarray:
    """uint8 RGB tiles resized to tile x tile and laid out in a near-square grid."""
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    canvas = np.zeros((rows * tile, columns * tile, 3), np.uint8)
    for index, image in enumerate(tiles):
        row, column = divmod(index, columns)
        canvas[row * tile:(row + 1) * tile, column * tile:(column + 1) * tile] = resize_image(
            image, (tile, tile)
        )
    return canvas


def write_predictions(
    model,
    paths: list[Path],
    config: Config,
    output_dir: Path,
    *,
    prefix: str = "",
    overlays_dir: Path | None = None,
    mosaic_path: Path | None = None,
    description: str | None = None,
) -> None:
    """Predict `paths` in batches; write `{prefix}{stem}.png` palette masks at each input's size.

    Optionally also overlays (image with class colors) and one mosaic of the first overlays.
    `description` shows a progress bar with that label.
    """
    colors = [spec.color for spec in config.data.classes]
    batches = image_batches(paths, config)
    if description:
        batches = track(batches, description, total=math.ceil(len(paths) / config.infer.batch_size))
    output_dir.mkdir(parents=True, exist_ok=True)
    tiles = []
    for chunk, batch, sizes in batches:
        for path, labels, size in zip(chunk, predict_labels(model, batch), sizes, strict=True):
            labels = resize_labels(labels, size)
            labels_to_palette_image(labels, colors).save(output_dir / f"{prefix}{path.stem}.png")
            if overlays_dir is None and mosaic_path is None:
                continue
            tinted = overlay(read_image(path, 3), labels, colors)
            if overlays_dir is not None:
                overlays_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(tinted).save(overlays_dir / f"{prefix}{path.stem}.png")
            if len(tiles) < MOSAIC_MAX_TILES:
                tiles.append(tinted)
    if mosaic_path is not None and tiles:
        mosaic_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mosaic(tiles)).save(mosaic_path)


@dataclass
class InferResult:
    written: int
    skipped: list[str]
    output_dir: Path


def infer_folder(
    model, config: Config, images_dir: Path, output_dir: Path, *, with_overlays: bool
) -> InferResult:
    """Masks for every image in `images_dir` (other files are skipped and named in the result).

    Overlays go to `output_dir/overlays/`, their mosaic to `output_dir/mosaic/mosaic.png`
    (subfolders, so the output folder holds only masks and can be scored as it is). Files are
    written beside `output_dir` first and moved in once all are done: an unreadable image or a
    Ctrl-C leaves `output_dir` as it was.
    """
    paths, skipped = list_images(images_dir)
    if output_dir.resolve() == images_dir.resolve():
        raise UserError(f"{output_dir}: is the input folder; choose another --output")
    _check_unique_stems(paths)
    with staged(output_dir) as staging:
        write_predictions(
            model, paths, config, staging,
            overlays_dir=staging / "overlays" if with_overlays else None,
            mosaic_path=staging / "mosaic" / "mosaic.png" if with_overlays else None,
            description="inferring",
        )
    return InferResult(len(paths), skipped, output_dir)


def _check_unique_stems(paths: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise UserError(
                f"{path.parent}: {seen[path.stem].name} and {path.name} would both be written "
                f"as {path.stem}.png; rename one of them"
            )
        seen[path.stem] = path
