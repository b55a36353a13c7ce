"""Typed run configuration (pydantic v2), loaded from YAML, with `section.key=value` overrides.

Relative paths in a config file are relative to the folder that holds the file; those given
with `--set` are relative to the current directory.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from flexunet_k3.errors import UserError

PositiveInt = Annotated[int, Field(gt=0)]
# Keras activations that suit hidden convolution layers.
Activation = Literal[
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish", "mish",
    "hard_silu", "softplus", "tanh", "sigmoid", "linear",
]
Pair = tuple[int, int]


def _as_pair(value):
    """Accept 9 or [9, 9] for a 2D size."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ClassSpec(Section):
    name: str
    color: tuple[int, int, int]

    @field_validator("color")
    @classmethod
    def _color_in_range(cls, color):
        if any(not 0 <= c <= 255 for c in color):
            raise ValueError(f"RGB values must be 0..255, got {list(color)}")
        return color


class ModelConfig(Section):
    """The network; `name` picks an architecture from the registry (flexunet_k3.models)."""

    name: str = "flexunet"
    image_height: PositiveInt = 512
    image_width: PositiveInt = 512
    image_channels: Literal[1, 3] = 3
    num_classes: PositiveInt = 2
    base_filters: PositiveInt = 16
    base_kernels: Pair = (9, 9)
    num_layers: Annotated[int, Field(ge=2)] = 8
    dropout_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.04
    dilation: Pair = (1, 1)
    normalization: bool = False
    # Batch normalization's moving-average momentum (Keras' default); lower adapts its
    # inference statistics faster, which short trainings need.
    normalization_momentum: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.99
    input_normalize: bool = False
    activation: Activation = "relu"
    final_activation: Literal["auto", "softmax", "sigmoid"] = "auto"

    _pairs = field_validator("base_kernels", "dilation", mode="before")(_as_pair)

    @field_validator("name")
    @classmethod
    def _known_architecture(cls, name):
        from flexunet_k3.models import MODELS  # imports this module: not at module level

        if name not in MODELS:
            raise ValueError(f"unknown architecture {name!r}; known: {', '.join(MODELS)}")
        return name

    @field_validator("base_kernels")
    @classmethod
    def _odd_kernels(cls, kernels):
        if any(k < 1 or k % 2 == 0 for k in kernels):
            raise ValueError(f"kernel sizes must be odd and positive, got {list(kernels)}")
        return kernels

    @field_validator("dilation")
    @classmethod
    def _positive_dilation(cls, dilation):
        if any(d < 1 for d in dilation):
            raise ValueError(f"dilation must be >= 1, got {list(dilation)}")
        return dilation

    @model_validator(mode="after")
    def _size_fits_levels(self):
        factor = 2 ** (self.num_layers - 1)
        for key in ("image_height", "image_width"):
            if getattr(self, key) % factor:
                raise ValueError(
                    f"{key} {getattr(self, key)} is not divisible by 2**(num_layers-1) = {factor}"
                )
        return self


class OptimizerConfig(Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: Annotated[float, Field(gt=0)] = 5e-5
    clipvalue: Annotated[float, Field(gt=0)] | None = None
    clipnorm: Annotated[float, Field(gt=0)] | None = None
    weight_decay: Annotated[float, Field(ge=0)] | None = None
    momentum: Annotated[float, Field(ge=0)] = 0.0

    @model_validator(mode="after")
    def _one_clip(self):
        if self.clipvalue is not None and self.clipnorm is not None:
            raise ValueError("set clipvalue or clipnorm, not both")
        return self

    @model_validator(mode="after")
    def _options_of_this_optimizer(self):
        if self.weight_decay is not None and self.name != "adamw":
            raise ValueError(f"weight_decay applies only to adamw, not {self.name}")
        if self.momentum and self.name != "sgd":
            raise ValueError(f"momentum applies only to sgd, not {self.name}")
        return self


class DataConfig(Section):
    """Where the images and masks are. `dataset` holds train|valid|test/images|masks."""

    dataset: Path | None = None
    train_images: Path | None = None
    train_masks: Path | None = None
    valid_images: Path | None = None
    valid_masks: Path | None = None
    test_images: Path | None = None
    test_masks: Path | None = None
    classes: list[ClassSpec] = Field(
        default_factory=lambda: [
            ClassSpec(name="background", color=(0, 0, 0)),
            ClassSpec(name="tumor", color=(255, 255, 255)),
        ],
        min_length=1,
    )
    cache: Literal["none", "memory", "disk"] = "none"
    # Loader threads: they decode (and cache) images and prefetch batches; under TensorFlow at
    # least 2 (see SegmentationDataset).
    workers: Annotated[int, Field(ge=1)] = 1

    def split_dirs(self, split: Literal["train", "valid", "test"]) -> tuple[Path, Path]:
        """(images, masks) folders of a split; explicit keys win over `dataset`."""
        images = getattr(self, f"{split}_images")
        masks = getattr(self, f"{split}_masks")
        if images is None or masks is None:
            if self.dataset is None:
                raise UserError(
                    f"data.{split}_images/data.{split}_masks are not set and neither is "
                    "data.dataset: set data.dataset to the prepared dataset folder"
                )
            images = images or self.dataset / split / "images"
            masks = masks or self.dataset / split / "masks"
        return images, masks


class AugmentConfig(Section):
    """Online augmentation of training batches (off by default).

    Each transform fires with `probability`. Rotation picks one of `rotation_angles` (degrees,
    counter-clockwise); shrink picks one of `shrink_ratios` and pastes the smaller image centered
    on background; `shear` is the largest horizontal shear factor; the elastic deformation
    (off while `elastic_alpha` is 0) is uniform noise smoothed with `elastic_sigma` pixels, times
    `elastic_alpha`, as in Simard et al. 2003; `brightness` is the largest shift as a share of
    255 and `contrast` the largest change of the gain (1 +- contrast) about the image mean.
    """

    enabled: bool = False
    hflip: bool = True
    vflip: bool = False
    rotation_angles: list[float] = Field(default_factory=lambda: [-10.0, 10.0])
    shrink_ratios: list[Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=list)
    shear: Annotated[float, Field(ge=0, lt=1)] = 0.0
    elastic_alpha: Annotated[float, Field(ge=0)] = 0.0
    elastic_sigma: Annotated[float, Field(gt=0)] = 8.0
    brightness: Annotated[float, Field(ge=0, lt=1)] = 0.0
    contrast: Annotated[float, Field(ge=0, lt=1)] = 0.0
    probability: Annotated[float, Field(ge=0, le=1)] = 0.5


class ReducerConfig(Section):
    enabled: bool = True
    factor: Annotated[float, Field(gt=0, lt=1)] = 0.4
    patience: Annotated[int, Field(ge=0)] = 4
    min_lr: Annotated[float, Field(ge=0)] = 0.0


class TrainConfig(Section):
    output_dir: Path = Path("runs/flexunet")
    epochs: PositiveInt = 100
    batch_size: PositiveInt = 2
    seed: int = 42
    loss: Literal["categorical_crossentropy", "dice", "ce_dice"] = "categorical_crossentropy"
    patience: Annotated[int, Field(ge=0)] = 10
    reducer: ReducerConfig = Field(default_factory=ReducerConfig)
    epoch_change_infer: bool = True
    num_infer_images: Annotated[int, Field(ge=0)] = 6
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    jit: Literal["auto", "on", "off"] = "auto"
    steps_per_epoch: PositiveInt | None = None  # None: every batch; fewer for smoke runs
    # Keep freed memory in the process (glibc): faster steps, higher peak memory (BENCHMARKS.md)
    reuse_freed_memory: bool = False

    @field_validator("jit", mode="before")
    @classmethod
    def _yaml_switch(cls, value):
        """YAML reads a bare on/off as true/false."""
        return ("on" if value else "off") if isinstance(value, bool) else value


class InferConfig(Section):
    images_dir: Path | None = None
    output_dir: Path | None = None
    overlay: bool = False
    batch_size: PositiveInt = 4
    # Average each image's probabilities with those of its horizontal flip (test-time mirroring)
    mirror: bool = False


class Config(Section):
    """A whole run: model, optimizer, data, augmentation, training and inference."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    infer: InferConfig = Field(default_factory=InferConfig)

    @model_validator(mode="after")
    def _classes_match_model(self):
        expected = max(self.model.num_classes, 2)
        if len(self.data.classes) != expected:
            raise ValueError(
                f"data.classes lists {len(self.data.classes)} classes but model.num_classes is "
                f"{self.model.num_classes} (expected {expected} entries, background first)"
            )
        return self

    def resolve_paths(self, base: Path, from_cwd: set[str] = frozenset()) -> Config:
        """A copy whose relative paths are made absolute against `base`, or against the
        current directory for the `section.key` names in `from_cwd`."""
        data = self.model_dump()
        for section, values in data.items():
            for key, value in values.items():
                if isinstance(value, Path) and not value.is_absolute():
                    folder = Path.cwd() if f"{section}.{key}" in from_cwd else base
                    values[key] = (folder / value).resolve()
        return Config.model_validate(data)

    def infer_images_dir(self) -> Path:
        """infer.images_dir, else the test split's images."""
        return self.infer.images_dir or self.data.split_dirs("test")[0]

    def to_yaml(self) -> str:
        """The config as YAML (paths as strings, tuples as lists)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_error(error: dict, overridden: Collection[str]) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if any(where == key or where.startswith(key + ".") for key in overridden):
        where = f"--set {where}"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}"


def validation_message(
    source: str, error: ValidationError, overridden: Collection[str] = ()
) -> str:
    """One line naming the file and every offending key (`--set key` for `overridden` ones)."""
    return f"{source}: " + "; ".join(_format_error(e, overridden) for e in error.errors())


def parse_override(text: str) -> tuple[list[str], object]:
    """`section.key=value` -> (['section', 'key'], YAML-parsed value)."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise UserError(f"--set {text!r}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each `section.key=value` in a raw config mapping (before validation)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {text!r}: {key} is not a section")
            node = child
        node[keys[-1]] = value
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader (plain types only, as `yaml.safe_load`), refusing a key given twice
    in one mapping (it keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader refuses it below
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> dict:
    """A YAML mapping from a file, or a UserError naming the file."""
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), _UniqueKeyLoader)  # a yaml.SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def validate(data: dict, source: str, overridden: Collection[str] = ()) -> Config:
    """A Config from a raw mapping, or a UserError naming `source` and the keys."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise UserError(validation_message(source, exc, overridden)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override, validate and resolve a YAML config file."""
    path = Path(path)
    overrides = overrides or []
    data = apply_overrides(read_yaml(path), overrides)
    overridden = {".".join(parse_override(text)[0]) for text in overrides}
    config = validate(data, str(path), overridden)
    return config.resolve_paths(path.resolve().parent, from_cwd=overridden)
