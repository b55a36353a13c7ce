"""Typed run configuration (pydantic v2), loaded from YAML, with `section.key=value` overrides.

Relative paths in a config file are relative to the folder that holds the file; those given
with `--set` are relative to the current directory.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Collection, Hashable, Iterator
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from flexunet_k3.architectures import ARCHITECTURES
from flexunet_k3.errors import UserError, first_line, plural
from flexunet_k3.files import decode_text, read_bytes

MAX_BATCH_SIZE = 4096
MAX_WEIGHTS = 2**32  # 16 GiB of float32 weights; an optimizer adds 2 or 3 times that
MAX_CONFIG_BYTES = 1 << 20  # a config is a few kB; this bounds what a wrong file costs to read


def _as_yaml(value) -> str:
    """A parsed YAML value as messages show it: null, true, 5, a list, a mapping."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "a list"
    return "a mapping" if isinstance(value, dict) else repr(value)


def _not_a_bool(value):
    """YAML reads true/false as booleans, which pydantic would take as 1/0 for a number."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {_as_yaml(value)}")
    return value


def _path_text(value):
    """Refuse an empty path, which Python reads as the current folder, and a date (YAML reads
    an unquoted 2024-01-01 as one)."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("an empty path; give a name (`.` for the folder relative paths "
                         "start from)")
    if isinstance(value, datetime.date):
        raise ValueError(f"YAML reads {value} as a date; quote it as a path: '{value}'")
    return value


def _a_file_name(path: Path) -> Path:
    """Refuse what no file system can name: a NUL, or text with no bytes for it (a lone
    surrogate, as YAML's "\\ud800" escape writes one)."""
    if "\0" in str(path):
        raise ValueError("a path cannot hold a NUL character")
    try:
        os.fsencode(path)
    except UnicodeEncodeError as exc:
        raise ValueError(f"a path cannot hold {exc.object[exc.start]!r} (half of a UTF-16 "
                         "pair, no character on its own)") from None
    return path


# Counts are strict ints (a YAML true or 2.5 is refused); floats are finite (allow_inf_nan in
# Section) and never booleans. Each field gives its range.
Count = Annotated[int, Field(strict=True)]
Real = Annotated[float, BeforeValidator(_not_a_bool)]
Location = Annotated[Path, BeforeValidator(_path_text), AfterValidator(_a_file_name)]
# Keras activations that suit hidden convolution layers.
Activation = Literal[
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "swish", "mish",
    "hard_silu", "softplus", "tanh", "sigmoid", "linear",
]
Kernel = Annotated[Count, Field(ge=1, le=63)]
Dilation = Annotated[Count, Field(ge=1, le=32)]
Channel = Annotated[Count, Field(ge=0, le=255)]


def _as_pair(value):
    """Accept 9 or [9, 9] for a 2D size."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ClassSpec(Section):
    name: str = Field(min_length=1)
    color: tuple[Channel, Channel, Channel]


class ModelConfig(Section):
    """The network; `name` picks an architecture (flexunet_k3.architectures)."""

    name: str = "flexunet"
    image_height: Count = Field(512, ge=1, le=8192)
    image_width: Count = Field(512, ge=1, le=8192)
    image_channels: Annotated[Literal[1, 3], BeforeValidator(_not_a_bool)] = 3
    num_classes: Count = Field(2, ge=1, le=255)  # masks hold uint8 class ids
    base_filters: Count = Field(16, ge=1, le=1024)
    base_kernels: tuple[Kernel, Kernel] = (9, 9)
    num_layers: Count = Field(8, ge=2, le=12)
    dropout_rate: Real = Field(0.04, ge=0.0, lt=1.0)
    dilation: tuple[Dilation, Dilation] = (1, 1)
    normalization: bool = False
    # Batch normalization's moving-average momentum (Keras' default); lower adapts its
    # inference statistics faster, which short trainings need.
    normalization_momentum: Real = Field(0.99, gt=0.0, lt=1.0)
    input_normalize: bool = False
    activation: Activation = "relu"
    final_activation: Literal["auto", "softmax", "sigmoid"] = "auto"

    # the schema says what the validator takes: one number for both sides, or a pair
    _kernels = field_validator("base_kernels", mode="before",
                               json_schema_input_type=Kernel | tuple[Kernel, Kernel])(_as_pair)
    _dilations = field_validator("dilation", mode="before",
                                 json_schema_input_type=Dilation | tuple[Dilation, Dilation])(
        _as_pair)

    @field_validator("name")
    @classmethod
    def _known_architecture(cls, name):
        if name not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
        return name

    @field_validator("base_kernels")
    @classmethod
    def _odd_kernels(cls, kernels):
        if any(k % 2 == 0 for k in kernels):
            raise ValueError(f"kernel sizes must be odd, got {list(kernels)}")
        return kernels

    def size_divisor(self) -> int:
        """What image sides (and train.crop_size) must be multiples of: 2**(num_layers-1), one
        halving per level below the top."""
        return 2 ** (self.num_layers - 1)

    @model_validator(mode="after")
    def _size_fits_levels(self):
        factor = self.size_divisor()
        for key in ("image_height", "image_width"):
            if getattr(self, key) % factor:
                raise ValueError(
                    f"{key} {getattr(self, key)} is not divisible by 2**(num_layers-1) = {factor}"
                )
        deepest = self.base_filters * factor
        if deepest > 8192:
            raise ValueError(
                f"base_filters * 2**(num_layers-1) = {deepest} filters at the deepest level; "
                "at most 8192: lower base_filters or num_layers"
            )
        weights = self.weight_count()
        if weights > MAX_WEIGHTS:
            raise ValueError(
                f"{weights:,} weights ({weights * 4 / 2**30:,.0f} GiB in float32), more than "
                f"the {MAX_WEIGHTS:,} any device holds with room to train; lower base_filters, "
                "num_layers or base_kernels"
            )
        return self

    def levels(self) -> list[dict]:
        """Filters, kernel size, dilation and dropout rate of each level, top (0) to bottom:
        kernels shrink by 2 per level down to 3, dilations by 1 down to 1."""
        return [
            {
                "filters": self.base_filters * 2**i,
                "kernel_size": tuple(max(k - 2 * i, min(k, 3)) for k in self.base_kernels),
                "dilation_rate": tuple(max(d - i, 1) for d in self.dilation),
                "dropout": self.dropout_rate * i,
            }
            for i in range(self.num_layers)
        ]

    def weight_count(self) -> int:
        """The model's parameter count (what `flexunet summary` totals), without building it."""
        norm = 4 if self.normalization else 0  # batch normalization's 4 values per filter
        levels = self.levels()
        total = levels[0]["filters"] * self.num_classes + self.num_classes  # the 1x1 logits
        inputs = self.image_channels
        for i, level in enumerate(levels):
            f, (kh, kw) = level["filters"], level["kernel_size"]
            total += kh * kw * (inputs + f) * f + 2 * f * (1 + norm)  # the encoder's two convs
            if i < self.num_layers - 1:  # the decoder: up from level i+1, concat, two convs
                total += 4 * 2 * f * f + f + kh * kw * 3 * f * f + 2 * f * (1 + norm)
            inputs = f
        return total


class OptimizerConfig(Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    # any finite float32 rate: a huge one is how a run is made to diverge on purpose
    learning_rate: Real = Field(5e-5, gt=0, le=3.4e38)
    clipvalue: Real | None = Field(None, gt=0)
    clipnorm: Real | None = Field(None, gt=0)
    weight_decay: Real | None = Field(None, ge=0, le=1)
    momentum: Real = Field(0.0, ge=0, lt=1)

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

    dataset: Location | None = None
    train_images: Location | None = None
    train_masks: Location | None = None
    valid_images: Location | None = None
    valid_masks: Location | None = None
    test_images: Location | None = None
    test_masks: Location | None = None
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
    workers: Count = Field(1, ge=1, le=64)

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, classes):
        """Of two classes with one name or color, one could never appear in a mask."""
        for key in ("name", "color"):
            values = [getattr(spec, key) for spec in classes]
            for index, value in enumerate(values):
                if value in values[:index]:
                    raise ValueError(
                        f"classes {values.index(value)} and {index} share the {key} {value!r}; "
                        "give each class its own"
                    )
        return classes

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
    rotation_angles: list[Annotated[Real, Field(ge=-360, le=360)]] = Field(
        default_factory=lambda: [-10.0, 10.0]
    )
    shrink_ratios: list[Annotated[Real, Field(gt=0, le=1)]] = Field(default_factory=list)
    shear: Real = Field(0.0, ge=0, lt=1)
    elastic_alpha: Real = Field(0.0, ge=0, le=10_000)
    elastic_sigma: Real = Field(8.0, gt=0, le=1000)
    brightness: Real = Field(0.0, ge=0, lt=1)
    contrast: Real = Field(0.0, ge=0, lt=1)
    probability: Real = Field(0.5, ge=0, le=1)


class ReducerConfig(Section):
    enabled: bool = True
    factor: Real = Field(0.4, gt=0, lt=1)
    patience: Count = Field(4, ge=0, le=100_000)
    min_lr: Real = Field(0.0, ge=0, le=10)


MAX_DEVICES = 65_536


class TrainConfig(Section):
    output_dir: Location = Path("runs/flexunet")
    epochs: Count = Field(100, ge=1, le=100_000)
    batch_size: Count = Field(2, ge=1, le=MAX_BATCH_SIZE)
    seed: Count = Field(42, ge=0, le=2**32 - 1)  # numpy's and Keras' seed range
    loss: Literal["categorical_crossentropy", "dice", "ce_dice"] = "categorical_crossentropy"
    patience: Count = Field(10, ge=0, le=100_000)
    reducer: ReducerConfig = Field(default_factory=ReducerConfig)
    # constant: optimizer.learning_rate, lowered by the reducer on a plateau; cosine: epoch e
    # (from 0) of `epochs` runs at learning_rate * (1 + cos(pi * e / epochs)) / 2, no reducer
    lr_schedule: Literal["constant", "cosine"] = "constant"
    epoch_change_infer: bool = True
    num_infer_images: Count = Field(6, ge=0, le=1000)
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16", "auto"] = "float32"
    jit: Literal["auto", "on", "off"] = "auto"
    # Train on random crop_size x crop_size windows of the (augmented) images, a share
    # crop_foreground of them placed to hold a foreground pixel; validation, evaluation and
    # inference see whole images. None: train on whole images.
    crop_size: Count | None = Field(None, ge=1, le=65_536)
    crop_foreground: Real = Field(0.5, ge=0, le=1)
    # None: every batch; fewer for smoke runs
    steps_per_epoch: Count | None = Field(None, ge=1, le=1_000_000)
    # Keep freed memory in the process (glibc): faster steps, some more peak memory (BENCHMARKS.md)
    reuse_freed_memory: bool = True
    # Data parallelism on the backend's own engine (flexunet_k3.distribution); batch_size is
    # the global batch, split across the devices
    distribution: Literal["none", "data_parallel"] = "none"
    devices: Literal["all"] | Annotated[Count, Field(ge=1, le=MAX_DEVICES)] = "all"
    # Seconds to wait for the other processes: to start, and before a silent one counts as lost
    coordinator_timeout: Count = Field(300, ge=1, le=86_400)

    @model_validator(mode="after")
    def _one_rate_rule(self):
        if self.lr_schedule == "cosine" and self.reducer.enabled:
            raise ValueError("lr_schedule cosine sets every epoch's rate: set reducer.enabled "
                             "to false")
        return self

    @field_validator("devices", mode="before")
    @classmethod
    def _all_or_a_count(cls, value):
        """One message for both kinds of wrong value (pydantic would give one per type)."""
        if value == "all" or (type(value) is int and 1 <= value <= MAX_DEVICES):
            return value
        raise ValueError(f"expected all or a device count from 1 to {MAX_DEVICES}, "
                         f"got {value!r}")

    @field_validator("jit", mode="before",
                     json_schema_input_type=Literal["auto", "on", "off"] | bool)
    @classmethod
    def _yaml_switch(cls, value):
        """YAML 1.1 reads a bare on/off as true/false."""
        return ("on" if value else "off") if isinstance(value, bool) else value


class InferConfig(Section):
    images_dir: Location | None = None
    output_dir: Location | None = None
    overlay: bool = False
    batch_size: Count = Field(4, ge=1, le=MAX_BATCH_SIZE)
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
                f"data.classes: {plural(len(self.data.classes), 'class')} listed but "
                f"model.num_classes is {self.model.num_classes} (expected {expected} entries, "
                "background first)"
            )
        return self

    @model_validator(mode="after")
    def _crop_fits_model(self):
        crop, m = self.train.crop_size, self.model
        factor = m.size_divisor()
        if crop is not None and (crop % factor or crop > min(m.image_height, m.image_width)):
            raise ValueError(
                f"train.crop_size: {crop} must be a multiple of 2**(model.num_layers-1) = "
                f"{factor} and at most the image size {m.image_height}x{m.image_width}"
            )
        return self

    def train_size(self) -> tuple[int, int]:
        """(height, width) of the images a training step sees: train.crop_size or whole."""
        crop = self.train.crop_size
        return (crop, crop) if crop else (self.model.image_height, self.model.image_width)

    def resolve_paths(self, base: Path, from_cwd: set[str] = frozenset()) -> Config:
        """A copy whose relative paths are made absolute against `base`, or against the
        current directory for the `section.key` names in `from_cwd`: those given with --set.
        Defaults resolve against `base`, in a section --set created or replaced too."""
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
    """`key: problem`, the key as `--set key` where an override set it (or created its
    section), and `key (with --set ...)` where overrides set keys inside it or, for a check
    across sections (Config's own validators, which name their key first: "section.key:
    problem"), keys the problem names."""
    key = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    across = not key and error["type"] == "value_error"
    if across:
        key, _, message = message.partition(": ")
    shown = key if key.isprintable() else repr(key)  # a key holding a line break or a tab
    inside = sorted(
        name for name in overridden
        if name.startswith(key + ".") or (across and _names(message, name))
    ) if key else []
    if any(key == name or key.startswith(name + ".") for name in overridden):
        where = f"--set {shown}"
    elif inside:
        where = f"{shown} (with --set {', '.join(inside)})"
    else:
        where = shown or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if error["type"] == "path_type":  # pydantic's words name the Python class
        return f"{where}: expected a path, got {_as_yaml(error['input'])}"
    if error["type"] == "model_type":
        return f"{where}: expected a section (key: value pairs), got {_as_yaml(error['input'])}"
    return f"{where}: {message}"


def _names(message: str, key: str) -> bool:
    """Whether `message` names `key` (`model` is not named by `model.num_classes`)."""
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w.])", message) is not None


def validation_message(
    source: str, error: ValidationError, overridden: Collection[str] = ()
) -> str:
    """One line naming every offending key, and `source` unless all are `--set` keys (those in
    `overridden`)."""
    problems = [_format_error(e, overridden) for e in error.errors()]
    text = "; ".join(problems)
    return text if all(p.startswith("--set ") for p in problems) else f"{source}: {text}"


def parse_override(text: str) -> tuple[list[str], object]:
    """`section.key=value` -> (['section', 'key'], the value parsed as YAML, else as text)."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    keys = [part.strip() for part in key.split(".")]
    if not all(keys):
        raise UserError(f"--set {text!r}: the key has an empty part; expected section.key=value")
    try:
        value = _parse_yaml(raw)
    except AmbiguousNumberError as exc:  # refused as in a file, not taken as text
        raise UserError(f"--set {'.'.join(keys)}: {exc.problem}") from None
    except ValueError:
        value = raw
    if isinstance(value, str) and "#" in raw and "#" not in value:  # `run #2`: no comment
        value = raw
    return keys, value


def apply_overrides(data: dict, overrides: list[str]) -> tuple[set[str], set[str]]:
    """Set each `section.key=value` in a raw config mapping (before validation); the dotted
    keys the overrides set, and the sections they created."""
    keys_set, created = set(), set()
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for depth, key in enumerate(keys[:-1], start=1):
            if node.get(key) is None:  # absent, or empty in the file (`data:`)
                node[key] = {}
                created.add(".".join(keys[:depth]))
            if not isinstance(node[key], dict):
                raise UserError(f"--set {text!r}: {key} is not a section")
            node = node[key]
        node[keys[-1]] = value
        keys_set.update(_dotted_keys(".".join(keys), value))
    return keys_set, created


def _dotted_keys(key: str, value) -> Iterator[str]:
    """`key`, and the keys inside a mapping `value` (`train={epochs: 3}`: train.epochs)."""
    yield key
    if isinstance(value, dict):
        for inner, item in value.items():
            yield from _dotted_keys(f"{key}.{inner}", item)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader (plain types only, as `yaml.safe_load`), refusing a key given twice
    in one mapping (it keeps the last). Merged keys (`<<: *defaults`) may be given again."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # the base class merges it, its keys giving way to the node's own
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader refuses it below
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


class AmbiguousNumber(yaml.constructor.ConstructorError):
    """A number YAML 1.1 and 1.2 read differently (`_construct_int`)."""


class AmbiguousNumberError(ValueError):
    """`_parse_yaml`'s error for an AmbiguousNumber; `problem` says what it is, alone."""

    def __init__(self, message: str, problem: str):
        super().__init__(message)
        self.problem = problem


def _construct_int(loader: _UniqueKeyLoader, node: yaml.ScalarNode) -> int:
    """An integer, refused where YAML 1.1 (PyYAML) and YAML 1.2 read it differently: a
    leading zero (010 is 8 in 1.1, 10 in 1.2) or base 60 (1:30 is 90 in 1.1, text in 1.2)."""
    text = loader.construct_scalar(node).replace("_", "")
    if ":" in text or re.fullmatch(r"[-+]?0[0-9]+", text):
        raise AmbiguousNumber(
            problem=f"{text!r} is an octal or base-60 number in YAML 1.1; write it without "
            "leading zeros or colons, or quote it", problem_mark=node.start_mark)
    return loader.construct_yaml_int(node)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _parse_yaml(text: str):
    """YAML text as plain values, or a ValueError with a one-line reason."""
    try:
        return yaml.load(text, _UniqueKeyLoader)  # a yaml.SafeLoader
    except yaml.reader.ReaderError as exc:
        # exc.character: the code point
        hint = "; UTF-16 or UTF-32 without a byte-order mark? save it as UTF-8" * (
            exc.character == 0)
        raise ValueError(f"not valid YAML: character #x{exc.character:04x} at position "
                         f"{exc.position}: {exc.reason}{hint}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        context, problem = getattr(exc, "context", None), getattr(exc, "problem", None)
        if context and problem:
            problem = f"{context}{' ' if problem.startswith('but ') else ': '}{problem}"
        message = f"not valid YAML{where}: {problem or context or exc}"
        if isinstance(exc, AmbiguousNumber):
            raise AmbiguousNumberError(message, exc.problem) from None
        raise ValueError(message) from None
    except RecursionError:
        raise ValueError("not valid YAML: nested too deeply") from None
    except (ValueError, LookupError, AttributeError, TypeError) as exc:
        # PyYAML's constructors fail so on a malformed value: 2024-13-01, `!!int` alone
        raise ValueError(f"not valid YAML: cannot construct a value ({first_line(exc)})") from None


def read_yaml(path: Path) -> dict:
    """A YAML mapping from a file, or a UserError naming the file."""
    raw = read_bytes(path, "give the YAML config file", MAX_CONFIG_BYTES)
    try:
        data = _parse_yaml(decode_text(path, raw))
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
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
    data = read_yaml(path)
    keys_set, created = apply_overrides(data, overrides or [])
    config = validate(data, str(path), keys_set | created)
    return config.resolve_paths(path.resolve().parent, from_cwd=keys_set)
