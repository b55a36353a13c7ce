"""`flexunet train`: build or resume the model, fit with checkpoints, curves and progress.

Ctrl-C stops at the next step or epoch boundary and re-raises KeyboardInterrupt (a second one
stops at once); models/last.keras keeps the last finished epoch, and `resume=True` continues
from it with its optimizer state, epoch count and plateau counters (history.json), as if never
stopped, at a new learning rate only if the config's was changed since.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import keras

from flexunet_k3.callbacks import (
    CosineRate,
    EpochChangeInfer,
    EpochSetter,
    NanGuard,
    Plateau,
    ProgressBars,
    RunRecorder,
    SafeInterrupt,
    Throughput,
)
from flexunet_k3.config import Config, OptimizerConfig
from flexunet_k3.data.cases import warn_shared_cases
from flexunet_k3.data.dataset import dataset_from_config
from flexunet_k3.data.images import check_unique_stems, list_images
from flexunet_k3.distribution import Placement, start
from flexunet_k3.errors import UserError, plural
from flexunet_k3.files import copy_file, write_text
from flexunet_k3.interrupt import deferred, raise_if_pressed
from flexunet_k3.memory import keep_freed_memory
from flexunet_k3.model_io import (
    compile_model,
    load_trained_model,
    saved_precision,
    takes_any_size,
    with_jit,
)
from flexunet_k3.plots import write_curves
from flexunet_k3.precision import policy
from flexunet_k3.run_folder import RunFolder, TrainState, prepare_run, start_writing


def set_up_process(config: Config, precision: str) -> None:
    """The allocator, seed and precision policy (`auto` resolved) that `config` runs under."""
    if config.train.reuse_freed_memory:
        keep_freed_memory()
    keras.utils.set_random_seed(config.train.seed)
    keras.mixed_precision.set_global_policy(policy(precision))


def epoch_infer_paths(config: Config, placement: Placement) -> list[Path]:
    """The first `num_infer_images` of infer.images_dir (else the test images), or none."""
    if not config.train.epoch_change_infer or config.train.num_infer_images == 0:
        return []
    if placement.process_count > 1:
        if placement.writes:
            warnings.warn("train.epoch_change_infer is off when training in several processes "
                          "(a prediction's parts stay in their processes)", stacklevel=2)
        return []
    try:
        paths = list_images(config.infer_images_dir())[0][: config.train.num_infer_images]
        check_unique_stems(paths)
    except UserError as exc:
        hint = "(for epoch-change inference; or set train.epoch_change_infer: false)"
        raise UserError(f"{exc} {hint}") from None
    return paths


@dataclass
class TrainResult:
    state: TrainState
    model: keras.Model | None  # None when the run had nothing left to train
    writes: bool = True  # False in data-parallel processes other than 0


def train(config: Config, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train as configured; return the final state (also in history.json) and the model.

    Holds the run folder's lock throughout. Refuses a run folder holding an earlier run unless
    `resume` or `overwrite`, and files there that training would write but flexunet did not
    (run_folder.prepare_run). A NaN loss stops training with a UserError; models/last.keras
    keeps the last good epoch. After early stopping the returned model has the best weights
    (those of models/best.keras). Under train.distribution, processes other than 0 train
    alongside and write nothing.
    """
    placement = start(config, keras.backend.backend(), "flexunet train")
    run = RunFolder(config.train.output_dir)
    with run.locked("flexunet train") if placement.writes else nullcontext():
        infer_paths = epoch_infer_paths(config, placement)
        if placement.writes:
            state = prepare_run(run, resume=resume, overwrite=overwrite,
                                epochs=config.train.epochs,
                                infer_stems=[path.stem for path in infer_paths])
        else:  # process 0's run folder, where the hosts share it
            state = run.read_state() if resume else None
        if state is not None and placement.writes and run.history_behind(state):
            _catch_up(run, state)
        if state is not None and state.spent(config.train.epochs, config.train.patience):
            if not state.finished and placement.writes:  # stopped after its last epoch
                state.status = "completed"
                state.save(run.history)
            return TrainResult(state, None, placement.writes)
        state = state or TrainState(epochs=config.train.epochs)
        with deferred():  # Ctrl-C waits for a safe point (flexunet_k3.interrupt)
            model, nan_at = _fit(config, run, state, infer_paths, placement, resume=resume,
                                 overwrite=overwrite)
            _finish(model, run, state, nan_at, placement)
    return TrainResult(state, model, placement.writes)


def _catch_up(run: RunFolder, state: TrainState) -> None:
    """Write what a process killed after saving models/last.keras left unwritten: best.keras
    (where that epoch was the best), the curves and history.json."""
    warnings.warn(f"{run.history}: behind {run.last} (epoch {state.epoch}), the run was "
                  "stopped while saving; brought up to date from the checkpoint", stacklevel=3)
    if state.best_epoch == state.epoch:
        copy_file(run.last, run.best)
    write_curves(state.history, run.eval_dir)
    state.save(run.history)


def _fit(
    config: Config, run: RunFolder, state: TrainState, infer_paths: list[Path],
    placement: Placement, *, resume: bool, overwrite: bool,
) -> tuple[keras.Model, tuple[int, int] | None]:
    """Build (or load) the model and fit it; return it and where the loss became NaN, if it did.

    Ctrl-C before the first step stops with nothing written; later, models/last.keras keeps the
    last finished epoch (the unfinished one's steps are dropped).
    An earlier run's files go (with `overwrite`) only once the data and the model are ready.
    """
    train_data = dataset_from_config(config, "train", training=True, placement=placement)
    valid_data = dataset_from_config(config, "valid", training=False, placement=placement)
    if placement.writes:
        warn_shared_cases([image for image, _ in valid_data.pairs],
                          [image for image, _ in train_data.pairs], "train",
                          "validation scores (and early stopping) see patients trained on")
    for split, data in (("train", train_data), ("valid", valid_data)):
        if len(data) == 0:  # every batch holds a share for each device
            raise UserError(
                f"the {split} split has {plural(len(data.pairs), 'image')}, fewer than the "
                f"{placement.device_count} devices of train.distribution, each of which needs "
                "one a batch; lower train.devices, or add images")
    if valid_data.left_out and placement.writes:
        warnings.warn(
            f"validation leaves out the last {plural(valid_data.left_out, 'image')} of "
            f"{len(valid_data.pairs)}: batches are whole shares of the "
            f"{placement.device_count} devices of train.distribution", stacklevel=2)

    set_up_process(config, config.train.precision)
    model = _resume(run, config) if resume else compile_model(config)
    raise_if_pressed()
    state.epochs, state.status = config.train.epochs, "running"
    if placement.writes:
        start_writing(run, overwrite=overwrite)
        write_text(run.config, config.to_yaml())

    train_data.max_batches = config.train.steps_per_epoch
    steps = len(train_data)
    nan_guard = NanGuard()
    bars = ProgressBars(state.epochs, state.epoch, steps, len(valid_data))
    callbacks = [
        SafeInterrupt(),
        nan_guard,
        EpochSetter(train_data),
        Throughput(min(steps * config.train.batch_size, len(train_data.pairs))),
        *([CosineRate(config.optimizer.learning_rate, state.epochs)]
          if config.train.lr_schedule == "cosine" else []),
        Plateau(state, config.train.patience, config.train.reducer),
        RunRecorder(run, state, placement.writes),
        *([EpochChangeInfer(infer_paths, config, run)] if infer_paths else []),
        *([bars] if placement.writes else []),
    ]
    try:
        model.fit(
            train_data, validation_data=valid_data, epochs=state.epochs,
            initial_epoch=state.epoch, callbacks=callbacks, verbose=0, shuffle=False,
        )
    except Exception as exc:
        failure = train_data.failure or valid_data.failure or placement.lost_process(exc)
        if failure is None:
            raise
        raise failure from None  # a bad file, however the backend wrapped it; a lost process
    except KeyboardInterrupt:  # models/last.keras keeps the last finished epoch, to go on from
        state.status = "interrupted"
        if placement.writes:
            _record_interrupted(run, state)
        raise
    finally:
        bars.close()
    return model, nan_guard.where


def _record_interrupted(run: RunFolder, state: TrainState) -> None:
    """history.json for a run Ctrl-C stopped, as of the epoch models/last.keras holds: a second
    Ctrl-C may have cut that epoch's saving short, before the checkpoint or after it."""
    saved = run.checkpoint_state()
    if saved is not None and saved.epoch != state.epoch:
        if run.history_behind(saved):
            _catch_up(run, saved)
        state = replace(saved, status="interrupted")
    state.save(run.history)


def _resume(run: RunFolder, config: Config) -> keras.Model:
    """models/last.keras to go on training; refused if the config's model section changed since
    the run started. A learning rate changed in the config replaces the one the run reached."""
    anew = "train anew with --overwrite or in another train.output_dir"
    before = run.check_model(config, f"--resume goes on with the saved model: set them back, or "
                             f"{anew}")
    changed = [] if before is None else _compile_changes(before, config)
    if changed:
        raise UserError(f"{run.root}: trained with {', '.join(changed)}, not as the config says; "
                        f"--resume goes on with the saved optimizer, loss and metrics: set them "
                        f"back, or {anew}")
    model = with_jit(load_trained_model(run.last, config, compile=True), config.train.jit)
    if config.train.crop_size and not takes_any_size(model):
        raise UserError(
            f"{run.last}: trained on whole images, this model cannot go on with "
            "train.crop_size; set it back to null, or train anew with --overwrite or in another "
            "train.output_dir"
        )
    saved, asked = saved_precision(model), policy(config.train.precision)
    if saved != asked:  # its optimizer state (loss scaling too) belongs to the saved precision
        raise UserError(
            f"train.precision: {config.train.precision} ({asked}) but {run.last} trained in "
            f"{saved}; --resume goes on in the run's precision: set train.precision: {saved}, or "
            "train anew with --overwrite or in another train.output_dir"
        )
    wanted = config.optimizer.learning_rate
    constant = config.train.lr_schedule == "constant"  # cosine sets each epoch's rate itself
    if constant and before is not None and wanted != before.optimizer.learning_rate:
        reached = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        model.optimizer.learning_rate = wanted
        warnings.warn(
            f"optimizer.learning_rate changed from {before.optimizer.learning_rate:g} to "
            f"{wanted:g}: resuming at {wanted:g} instead of the {reached:g} the run had reached",
            stacklevel=2,
        )
    return model


def _compile_changes(trained: Config, config: Config) -> list[str]:
    """The settings compiled into the saved model (optimizer but its learning rate, loss, the
    class names its metrics carry) that `config` changes, as `key old value`."""
    pairs = {f"optimizer.{key}": (getattr(trained.optimizer, key), getattr(config.optimizer, key))
             for key in OptimizerConfig.model_fields if key != "learning_rate"}
    pairs["train.loss"] = (trained.train.loss, config.train.loss)
    pairs["data.classes"] = ([spec.name for spec in trained.data.classes],
                             [spec.name for spec in config.data.classes])
    return [f"{key} {old}" for key, (old, new) in pairs.items() if old != new]


def _finish(model, run: RunFolder, state: TrainState, nan_at: tuple[int, int] | None,
            placement: Placement) -> None:
    """Record how training ended (in process 0); after early stopping in one process, put the
    best weights back in `model` (in several, they stay in models/best.keras)."""
    writes = placement.writes
    if nan_at is not None:
        state.status = "nan_loss"
        if writes:
            state.save(run.history)
        epoch, step = nan_at
        kept = (
            f"{run.last} keeps epoch {state.epoch}, the last good one"
            if state.epoch else "no checkpoint was written"
        )
        raise UserError(
            f"the loss became NaN at epoch {epoch}, step {step}: training stopped and {kept}; "
            "lower optimizer.learning_rate or set optimizer.clipnorm and train with --overwrite"
        )
    if state.status == "early_stopped":
        if placement.process_count == 1:
            model.load_weights(run.best)
    else:
        state.status = "completed"
    if writes:
        state.save(run.history)
