"""Keras callbacks of `flexunet train`: NaN guard, plateau control, run records, progress.

They share one `TrainState` (kept in history.json), so a resumed run continues their counters.
Order matters in the callback list: SafeInterrupt, NanGuard, EpochSetter, Throughput,
(CosineRate), Plateau, RunRecorder, then the rest.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras

from flexunet_k3 import progress
from flexunet_k3.config import Config, ReducerConfig
from flexunet_k3.files import copy_file
from flexunet_k3.inference import write_predictions
from flexunet_k3.interrupt import raise_if_pressed
from flexunet_k3.model_io import save_model
from flexunet_k3.plots import write_curves
from flexunet_k3.run_folder import RunFolder, TrainState


def finite_loss(logs: dict | None) -> bool:
    """Whether the logs hold a finite training loss (not NaN, not inf)."""
    return logs is not None and math.isfinite(float(logs.get("loss", math.nan)))


class NanGuard(keras.callbacks.Callback):
    """Stops training at the first step whose loss is not finite; `where` = (epoch, step)."""

    def __init__(self):
        super().__init__()
        self.where: tuple[int, int] | None = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.where is None and not finite_loss(logs):
            self.where = (self.epoch + 1, batch + 1)
            self.model.stop_training = True


class SafeInterrupt(keras.callbacks.Callback):
    """Raises a Ctrl-C held by `flexunet_k3.interrupt.deferred()` between steps and epochs."""

    def _raise_if_pressed(self, *args, **kwargs):
        raise_if_pressed()

    on_epoch_begin = on_train_batch_begin = on_train_batch_end = _raise_if_pressed
    on_test_batch_end = _raise_if_pressed


class EpochSetter(keras.callbacks.Callback):
    """Gives the training loader each epoch's number, so order and augmentation follow the seed."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.set_epoch(epoch)


class Throughput(keras.callbacks.Callback):
    """Adds `images_per_s` to the epoch logs: images over the time of the epoch's training steps.

    The steps include data loading, metrics and progress updates, not validation or the other
    epoch-end callbacks; the first epoch includes compilation.
    """

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.started = self.last_step = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = self.last_step = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.last_step = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self.last_step > self.started:
            logs["images_per_s"] = self.images_per_epoch / (self.last_step - self.started)


def cosine_rate(peak: float, epoch: int, epochs: int) -> float:
    """The rate of `epoch` (from 0) of `epochs` on a cosine from `peak` towards 0."""
    return peak * (1 + math.cos(math.pi * epoch / epochs)) / 2


class CosineRate(keras.callbacks.Callback):
    """train.lr_schedule cosine: sets each epoch's learning rate (a resumed run's too)."""

    def __init__(self, peak: float, epochs: int):
        super().__init__()
        self.peak, self.epochs = peak, epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate = cosine_rate(self.peak, epoch, self.epochs)


class Plateau(keras.callbacks.Callback):
    """ReduceLROnPlateau and EarlyStopping on val_loss, their counters kept in the TrainState.

    Adds `learning_rate` (the rate this epoch ran with) to the epoch logs. Early stopping
    leaves the best weights in models/best.keras; `flexunet_k3.training` restores them.
    """

    def __init__(self, state: TrainState, patience: int, reducer: ReducerConfig):
        super().__init__()
        self.state, self.patience, self.reducer = state, patience, reducer

    def on_epoch_end(self, epoch, logs=None):
        learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["learning_rate"] = learning_rate
        if not finite_loss(logs):
            return
        state, val_loss = self.state, float(logs["val_loss"])
        if state.best_val_loss is None or val_loss < state.best_val_loss:
            state.best_val_loss, state.best_epoch, state.lr_wait = val_loss, epoch + 1, 0
            return
        state.lr_wait += 1
        if self.reducer.enabled and state.lr_wait >= self.reducer.patience:
            self.model.optimizer.learning_rate = max(
                learning_rate * self.reducer.factor, self.reducer.min_lr
            )
            state.lr_wait = 0
        if epoch + 1 - state.best_epoch >= self.patience:
            state.status = "early_stopped"
            self.model.stop_training = True


class RunRecorder(keras.callbacks.Callback):
    """After each good epoch: history, models/last.keras holding the run state (copied to
    best.keras when best), curves, history.json. Unless it `writes` (data-parallel processes
    other than 0), it keeps the history in memory and only takes part in saving the model
    (save_model)."""

    def __init__(self, run: RunFolder, state: TrainState, writes: bool = True):
        super().__init__()
        self.run, self.state, self.writes = run, state, writes

    def on_epoch_end(self, epoch, logs=None):
        if not finite_loss(logs):
            return
        self.state.record(logs)
        save_model(self.model, self.run.last if self.writes else None, self.state.as_member())
        if self.writes:
            if self.state.best_epoch == self.state.epoch:
                copy_file(self.run.last, self.run.best)  # the same bytes, not a second save
            write_curves(self.state.history, self.run.eval_dir)
            self.state.save(self.run.history)


class EpochChangeInfer(keras.callbacks.Callback):
    """Predicts a few images after each epoch: Epoch_{n}_{name}.png and mosaic/Epoch_{n}.png
    in the run's epoch_change_infer/, recorded as the run's before they are written."""

    def __init__(self, paths: list[Path], config: Config, run: RunFolder):
        super().__init__()
        self.paths, self.config, self.run = paths, config, run

    def on_epoch_end(self, epoch, logs=None):
        if finite_loss(logs):
            images = self.run.epoch_images(epoch + 1, [path.stem for path in self.paths])
            self.run.claim(images)
            write_predictions(
                self.model, self.paths, self.config, self.run.epoch_infer_dir,
                prefix=f"Epoch_{epoch + 1}_", mosaic_path=images[-1],
            )


def _format(logs: dict, keys) -> str:
    return "  ".join(f"{key} {float(logs[key]):.4g}" for key in keys if key in logs)


class ProgressBars(keras.callbacks.Callback):
    """An epoch bar, a step bar (loss, metrics, ETA) and a line per epoch with validation scores.

    Plain lines (one per epoch) when stdout is not a terminal; nothing when quiet.
    Call `close()` when fit returns or raises.
    """

    def __init__(self, epochs: int, first_epoch: int, steps: int, validation_steps: int):
        super().__init__()
        self.epochs, self.first_epoch = epochs, first_epoch
        self.steps, self.validation_steps = steps, validation_steps
        self.bars = None
        self.started = 0.0
        if not progress.is_quiet() and progress.console.is_terminal:
            self.bars = progress.new_progress()

    def on_train_begin(self, logs=None):
        if self.bars is None:
            return
        self.bars.start()
        self.epoch_bar = self.bars.add_task(
            "epochs", total=self.epochs, completed=self.first_epoch, info=""
        )
        self.step_bar = self.bars.add_task("steps", total=self.steps, info="")

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()
        if self.bars is not None:
            self.bars.reset(self.step_bar, total=self.steps, description=f"epoch {epoch + 1}")

    def on_train_batch_end(self, batch, logs=None):
        if self.bars is not None:
            self.bars.update(self.step_bar, completed=batch + 1, info=_format(logs, logs))

    def on_test_begin(self, logs=None):
        if self.bars is not None:
            self.bars.reset(self.step_bar, total=self.validation_steps, description="validating")

    def on_test_batch_end(self, batch, logs=None):
        if self.bars is not None:
            self.bars.update(self.step_bar, completed=batch + 1, info=_format(logs, logs))

    def on_epoch_end(self, epoch, logs=None):
        extra = ("learning_rate", "images_per_s")
        train_keys = [key for key in logs if not key.startswith("val_") and key not in extra]
        seconds = time.perf_counter() - self.started
        line = (
            f"epoch {epoch + 1}/{self.epochs}  {_format(logs, train_keys)}  |  "
            f"{_format(logs, [key for key in logs if key.startswith('val_')])}  |  "
            f"lr {logs.get('learning_rate', math.nan):.3g}  "
            f"{logs.get('images_per_s', math.nan):.1f} img/s  {seconds:.1f}s"
        )
        if self.bars is not None:
            self.bars.console.print(line, markup=False, highlight=False)
            self.bars.update(self.epoch_bar, completed=epoch + 1)
        elif not progress.is_quiet():
            print(line, flush=True)

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
