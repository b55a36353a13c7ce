"""Models in one place: build and compile, load a trained one (checked against the config, in
its precision), save atomically, all under the process's data-parallel placement
(flexunet_k3.distribution). Training, evaluation, inference and benchmark go through it.

Importing it imports keras and registers the custom losses and metrics that saved models name.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import keras

from flexunet_k3.config import Config, OptimizerConfig
from flexunet_k3.distribution import current
from flexunet_k3.errors import UserError, first_line
from flexunet_k3.files import describe, replacing, temporary_prefix
from flexunet_k3.losses import get_loss
from flexunet_k3.metrics import segmentation_metrics
from flexunet_k3.models import build_model
from flexunet_k3.precision import policy

JIT = {"auto": "auto", "on": True, "off": False}  # train.jit -> keras' jit_compile


OPTIMIZERS = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
              "sgd": keras.optimizers.SGD}
# Loaded by class name, for this backend: Keras' torch backend saves its optimizers under its
# own module (keras.src.backend.torch.optimizers.torch_adam), which would not run on another.
_BY_CLASS_NAME = {cls.__name__: cls for cls in OPTIMIZERS.values()}


def make_optimizer(config: OptimizerConfig) -> keras.optimizers.Optimizer:
    """Adam, AdamW or SGD with the configured learning rate and gradient clipping."""
    options = {
        "learning_rate": config.learning_rate,
        "clipvalue": config.clipvalue,
        "clipnorm": config.clipnorm,
    }
    if config.name == "adamw":
        options["weight_decay"] = 0.004 if config.weight_decay is None else config.weight_decay
    elif config.name == "sgd":
        options["momentum"] = config.momentum
    return OPTIMIZERS[config.name](**options)


def new_model(config: Config) -> keras.Model:
    """The config's model, untrained; one taking any image size when it trains on crops."""
    return build_model(config.model, any_size=config.train.crop_size is not None)


def compile_model(config: Config, *, metrics: bool = True) -> keras.Model:
    """A new model compiled with the configured optimizer, loss and (unless not `metrics`:
    the bare model benchmarks/bare_fit.py compares with) the segmentation metrics."""
    names = [spec.name for spec in config.data.classes]
    with current().scope():
        model = new_model(config)
        model.compile(
            optimizer=make_optimizer(config.optimizer),
            loss=get_loss(config.train.loss),
            metrics=segmentation_metrics(names) if metrics else None,
            jit_compile=JIT[config.train.jit],
        )
        # Now, not in the first step: TensorFlow traces a step that makes variables twice.
        model.optimizer.build(model.trainable_variables)
    return model


def load_trained_model(path: Path, config: Config, *, compile: bool = False):
    """A model saved by `flexunet train` (safe mode), checked against the config's shapes;
    uncompiled, it comes in the config's train.precision and train.jit, ready to predict."""
    if not path.is_file():
        raise UserError(
            f"{path}: no trained model here ({describe(path)}); run `flexunet train` first"
        )
    model = _read_model_file(path, compile)
    expected = ((config.model.image_height, config.model.image_width,
                 config.model.image_channels), config.model.num_classes)
    found = _signature(model)
    if not _fits(found, expected):
        raise UserError(
            f"{path}: this model takes {_describe(found)} but the config says "
            f"{_describe(expected)}; use the config the model was trained with"
        )
    return model if compile else as_configured(model, config)


def save_model(model, path: Path | None, extra: Mapping[str, str] | None = None) -> None:
    """Save a keras model to a .keras file atomically, staging its weights on disk.

    Keras' own .keras writer buffers the whole weights file, optimizer state included, in
    memory: for the lung model that is 1.5 GB more at every checkpoint. This writes the same
    archive (config.json, metadata.json, model.weights.h5) from an unzipped save instead.

    `extra` holds more files for the archive (name: text), which Keras passes over on loading.
    With `path` None, nothing is kept: in several JAX processes, saving is a collective
    operation that every process takes part in, while process 0 alone writes the file.
    """
    if path is None:
        with tempfile.TemporaryDirectory(prefix="flexunet-not-kept-") as scratch:
            model.save(Path(scratch) / "model", zipped=False)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=path.parent, prefix=temporary_prefix("saving")) as staging,
        replacing(path) as temporary,
    ):
        folder = Path(staging) / "model"
        model.save(folder, zipped=False)
        with zipfile.ZipFile(temporary, "w") as archive:
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(folder).as_posix())
            for name, text in (extra or {}).items():
                archive.writestr(name, text)


def as_configured(model, config: Config):
    """`model` for prediction under the config's train.precision and train.jit.

    A saved model keeps the precision it was trained with; another one is built from the config
    under the asked precision (`auto` resolved for this machine) and given the saved weights
    (stored in float32 either way).
    """
    precision = policy(config.train.precision)
    if saved_precision(model) != precision:
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(precision)
        try:
            with current().scope():
                rebuilt = build_model(config.model, takes_any_size(model))
        finally:
            keras.mixed_precision.set_global_policy(previous)
        rebuilt.set_weights(model.get_weights())
        model = rebuilt
    return with_jit(model, config.train.jit)


def with_jit(model, jit: str):
    """`model` compiled (`on`) or run step by step (`off`) as train.jit says; `auto` leaves
    Keras' choice, made when the model was compiled (per backend; no torch.compile)."""
    if jit != "auto":
        model.jit_compile = JIT[jit]
    return model


def _read_model_file(path: Path, compile: bool):
    """keras.saving.load_model, any failure a one-line UserError."""
    if not zipfile.is_zipfile(path):  # Keras would say "File not found" of a truncated one
        reason = "not a whole .keras zip archive: truncated, or another kind of file"
    else:
        try:
            with current().scope():
                return keras.saving.load_model(path, compile=compile, safe_mode=True,
                                               custom_objects=_BY_CLASS_NAME)
        except Exception as exc:  # a corrupt or foreign file fails in many ways
            if compile and "Could not locate class" in str(exc):
                raise UserError(
                    f"{path}: saved by an earlier flexunet whose training metrics this one no "
                    f"longer has ({first_line(exc)[:80]}...), so it cannot go on training; "
                    "evaluate and infer still load it: train anew with --overwrite or in "
                    "another train.output_dir"
                ) from None
            reason = first_line(exc, typed=True)
    raise UserError(
        f"{path}: cannot load this model ({reason}); it is damaged or not a flexunet model: "
        "train again or point to another run"
    )


def _signature(model) -> tuple | None:
    """((height, width, channels), classes) of a one-input, one-output image model."""
    inputs, outputs = getattr(model, "inputs", None) or [], getattr(model, "outputs", None) or []
    if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
        return None
    return tuple(inputs[0].shape[1:]), outputs[0].shape[-1]


def _fits(found: tuple | None, expected: tuple) -> bool:
    """The signatures match, a height or width of None (a model trained on crops) any size."""
    if found is None:
        return False
    (size, classes), (wanted, wanted_classes) = found, expected
    return classes == wanted_classes and all(
        have in (None, want) for have, want in zip(size, wanted, strict=True)
    )


def saved_precision(model) -> str:
    """The precision policy `model` computes in (that of its first layer with weights)."""
    return next(layer for layer in model.layers if layer.weights).dtype_policy.name


def takes_any_size(model) -> bool:
    """Whether the model was built for training on crops (any image size)."""
    return None in tuple(model.inputs[0].shape[1:3])


def _describe(signature: tuple | None) -> str:
    if signature is None:
        return "something other than one image in and one mask out"
    (height, width, channels), classes = signature
    images = (f"{channels}-channel images of any size" if None in (height, width)
              else f"{height}x{width}x{channels} images")
    return f"{images} and {classes} output classes"
