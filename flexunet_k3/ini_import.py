"""Convert the original tool's INI config (train_eval_infer.config) to our YAML mapping.

Values are Python literals parsed with `ast.literal_eval` (never eval). Keys that have no
counterpart here are returned, with the reason, so the caller can list them.
"""

from __future__ import annotations

import ast
import configparser
import os
from pathlib import Path

from flexunet_k3.errors import UserError, first_line
from flexunet_k3.files import decode_text, read_bytes

MAX_INI_BYTES = 2**20  # the original's configs are about 2 kB

# (section, key) -> dotted path in our config.
DIRECT = {
    ("model", "image_width"): "model.image_width",
    ("model", "image_height"): "model.image_height",
    ("model", "image_channels"): "model.image_channels",
    ("model", "num_classes"): "model.num_classes",
    ("model", "base_filters"): "model.base_filters",
    ("model", "base_kernels"): "model.base_kernels",
    ("model", "num_layers"): "model.num_layers",
    ("model", "dropout_rate"): "model.dropout_rate",
    ("model", "dilation"): "model.dilation",
    ("model", "normalization"): "model.normalization",
    ("model", "input_normalize"): "model.input_normalize",
    ("model", "activation"): "model.activation",
    ("model", "learning_rate"): "optimizer.learning_rate",
    ("model", "clipvalue"): "optimizer.clipvalue",
    ("model", "clipnorm"): "optimizer.clipnorm",
    ("model", "generator"): "augment.enabled",
    ("train", "epochs"): "train.epochs",
    ("train", "batch_size"): "train.batch_size",
    ("train", "patience"): "train.patience",
    ("train", "learning_rate_reducer"): "train.reducer.enabled",
    ("train", "reducer_factor"): "train.reducer.factor",
    ("train", "reducer_patience"): "train.reducer.patience",
    ("train", "epoch_change_infer"): "train.epoch_change_infer",
    ("train", "num_infer_images"): "train.num_infer_images",
    ("train", "seed"): "train.seed",
    ("augmentor", "hflip"): "augment.hflip",
    ("augmentor", "vflip"): "augment.vflip",
    ("augmentor", "shrinks"): "augment.shrink_ratios",
}
PATHS = {
    ("train", "images_dir"): "data.train_images",
    ("train", "masks_dir"): "data.train_masks",
    ("valid", "images_dir"): "data.valid_images",
    ("valid", "masks_dir"): "data.valid_masks",
    ("test", "images_dir"): "data.test_images",
    ("test", "masks_dir"): "data.test_masks",
    ("infer", "images_dir"): "infer.images_dir",
    ("infer", "output_dir"): "infer.output_dir",
}
# Keys with no counterpart, and why.
FIXED = {
    ("model", "model"): "the architecture is model.name (flexunet)",
    ("model", "metrics"): "the metrics are fixed: dice_coef_multiclass plus foreground Dice/IoU",
    ("model", "show_summary"): "use `flexunet summary`",
    ("train", "metrics"): "train_metrics.csv always lists the fixed metrics",
    ("train", "model_dir"): "checkpoints go to models/ inside train.output_dir",
    ("train", "eval_dir"): "CSV logs go to eval/ inside train.output_dir",
    ("train", "epoch_change_infer_dir"): "written to epoch_change_infer/ inside train.output_dir",
    ("train", "save_weights_only"): "whole models are saved as .keras",
    ("train", "create_backup"): "the run folder keeps its own config.yaml",
    ("dataset", "class_name"): "masks are read by the one streaming loader",
    ("mask", "mask_file_format"): "masks may be .png or .npz",
}
LOSSES = {
    "categorical_crossentropy": "categorical_crossentropy",
    "dice_loss": "dice",
    "bce_dice_loss": "ce_dice",
}


def parse_value(raw: str):
    """A Python literal, or the raw text where it is not one (unquoted words, and literals
    nested too deeply or too large for Python's parser) or is a set (its order is lost: kernel
    sizes {7, 9} could be read as 9x7)."""
    text = raw.strip()
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    return text if isinstance(value, set) else value


def _set(target: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    target[last] = value


def _classes(rgb_map) -> list[dict]:
    """data.classes from the original's {(r, g, b): class_id}: ids 0..n-1, one color each."""
    if not isinstance(rgb_map, dict):
        raise ValueError("expected a dict {(r, g, b): class_id, ...}")
    ids = list(rgb_map.values())
    if not all(type(class_id) is int for class_id in ids):
        raise ValueError(f"class ids {ids} must be whole numbers")
    for class_id in sorted(set(ids)):
        if ids.count(class_id) > 1:
            raise ValueError(f"class {class_id} has {ids.count(class_id)} colors; flexunet-k3 "
                             "takes one color per class (data.classes): keep one, and recolor "
                             "the masks that use the others")
    if sorted(ids) != list(range(len(ids))):
        raise ValueError(f"class ids {sorted(ids)} must be 0..{len(ids) - 1}, each once")
    colors = list(rgb_map)
    if not all(isinstance(color, tuple) and len(color) == 3 for color in colors):
        raise ValueError(f"colors {colors} must be (r, g, b) triples")
    classes = []
    for color, class_id in sorted(rgb_map.items(), key=lambda item: item[1]):
        name = "background" if class_id == 0 else f"class{class_id}"
        classes.append({"name": name, "color": list(color)})
    return classes


def _relocated(value, ini_dir: Path, out_dir: Path) -> str:
    """A path of the INI (relative to its folder) made relative to the output's folder."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a path, got {value!r}")
    path = Path(value)
    if not path.is_absolute():
        path = (ini_dir / path).resolve()
    return os.path.relpath(path, out_dir.resolve())


def _numbers(values: dict, key: str) -> list[float]:
    """The [augmentor] list `key` (empty where absent); ValueError where not a list of numbers."""
    value = values.get(key, [])
    numbers = isinstance(value, list | tuple) and all(
        isinstance(item, int | float) and not isinstance(item, bool) for item in value
    )
    if not numbers:
        raise ValueError(f"{key}: expected a list of numbers, got {value!r}")
    return [float(item) for item in value]


def _augment(result: dict, values: dict, unmapped: list) -> None:
    """The [augmentor] section's rotation and shear (flips and shrinks map directly)."""
    rotation = values.get("rotation", True)
    if "angles" in values or rotation is False:
        _set(result, "augment.rotation_angles", _numbers(values, "angles") if rotation else [])
    shears = _numbers(values, "shears")
    if shears:
        _set(result, "augment.shear", max(abs(s) for s in shears))
    for key in sorted(set(values) - {"hflip", "vflip", "shrinks", "rotation", "angles", "shears"}):
        unmapped.append((f"augmentor.{key}", "no counterpart in augment"))


def import_ini(path: Path, output: Path) -> tuple[dict, list[tuple[str, str]]]:
    """Read an original INI config: (our YAML mapping, [(section.key, why not mapped)])."""
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    data = read_bytes(path, "give the INI file (train_eval_infer.config)", MAX_INI_BYTES)
    try:
        parser.read_string(decode_text(path, data), source=str(path))
    except configparser.Error as exc:
        raise UserError(f"{path}: not an INI config: {first_line(exc)}") from None
    if not parser.sections():
        raise UserError(f"{path}: no [sections] found: not an original train_eval_infer.config")
    ini_dir, out_dir = path.resolve().parent, output.resolve().parent
    result: dict = {}
    unmapped: list[tuple[str, str]] = []
    augmentor: dict = {}
    for section in parser.sections():
        for key, raw in parser.items(section):
            value = parse_value(raw)
            where = (section, key)
            try:
                if where in DIRECT:
                    _set(result, DIRECT[where], value)
                elif where in PATHS:
                    _set(result, PATHS[where], _relocated(value, ini_dir, out_dir))
                elif where == ("model", "optimizer"):
                    _set(result, "optimizer.name", str(value).lower())
                elif where == ("model", "loss"):
                    if isinstance(value, str) and value in LOSSES:
                        _set(result, "train.loss", LOSSES[value])
                    else:
                        unmapped.append((f"{section}.{key}", f"loss {value!r} not available"))
                elif where == ("mask", "rgb_map"):
                    _set(result, "data.classes", _classes(value))
                elif where == ("image", "color_order"):
                    if str(value).upper() != "RGB":
                        unmapped.append((f"{section}.{key}", "images are always read as RGB"))
                elif section == "augmentor":
                    augmentor[key] = value
                elif where in FIXED:
                    unmapped.append((f"{section}.{key}", FIXED[where]))
                else:
                    unmapped.append((f"{section}.{key}", "unknown to flexunet-k3"))
            except (TypeError, ValueError, AttributeError) as exc:
                raise UserError(f"{path}: [{section}] {key} = {raw.strip()}: {exc}") from None
    try:
        _augment(result, augmentor, unmapped)
    except ValueError as exc:
        raise UserError(f"{path}: [augmentor] {exc}") from None
    return result, unmapped
