"""The run folder (README, "A run folder"): its file names, its state, atomic writes.

Importing this module does not import keras.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from flexunet_k3.config import Config, ModelConfig, load_config, validation_message
from flexunet_k3.errors import UserError


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; once written, it replaces `path` (os.replace).

    A crash or Ctrl-C while writing leaves the old file whole and removes the temporary one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def staged(folder: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `folder`; after the block, move the files written there
    into `folder` (replacing those of the same name).

    An error or Ctrl-C inside the block leaves `folder` as it was; the temporary folder (only
    ever the one made here, never `folder`) is removed either way.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix=f".{folder.name}.", dir=folder.parent, ignore_cleanup_errors=True
    ) as temporary:
        staging = Path(temporary)
        yield staging
        for written in sorted(path for path in staging.rglob("*") if path.is_file()):
            target = folder / written.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(written, target)


def check_output_folder(output: Path, folders: Sequence[str] = ()) -> None:
    """Refuse, before any work, an output that is a file or lies under one, or that holds a
    file where one of `folders` (paths relative to it) goes."""
    for folder in (output, *(output / name for name in folders)):
        for path in (folder, *folder.parents):
            if path.exists() and not path.is_dir():
                raise UserError(
                    f"{path}: is a file, not a folder; choose another output or move the file"
                )


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with replacing(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: Path, data) -> None:
    """Write a JSON file atomically (NaN and infinities written as null)."""
    write_text(path, json.dumps(_finite_or_none(data), indent=2) + "\n")


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(item) for item in value]
    return value


def save_model(model, path: Path) -> None:
    """Save a keras model to a .keras file atomically, staging its weights on disk.

    Keras' own .keras writer buffers the whole weights file, optimizer state included, in
    memory: for the lung model that is 1.5 GB more at every checkpoint. This writes the same
    archive (config.json, metadata.json, model.weights.h5) from an unzipped save instead.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=path.parent, prefix=".saving-") as staging,
        replacing(path) as temporary,
    ):
        folder = Path(staging) / "model"
        model.save(folder, zipped=False)
        with zipfile.ZipFile(temporary, "w") as archive:
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(folder).as_posix())


EVALUATION_FILES = (
    "evaluation.csv", "evaluation.json", "evaluation_per_image.csv", "evaluation_per_case.csv"
)


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run's outputs under `root` (config.train.output_dir)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def best(self) -> Path:
        return self.root / "models" / "best.keras"

    @property
    def last(self) -> Path:
        return self.root / "models" / "last.keras"

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def epoch_infer_dir(self) -> Path:
        return self.root / "epoch_change_infer"

    @property
    def infer_dir(self) -> Path:
        return self.root / "infer"

    def training_outputs(self) -> list[Path]:
        """Our files from an earlier run that exist now (what --overwrite replaces)."""
        fixed = [self.best, self.last, self.history]
        curves = [self.eval_dir / f"train_{kind}.{ext}"
                  for kind in ("losses", "metrics") for ext in ("csv", "png")]
        evaluation = [self.root / name for name in EVALUATION_FILES]
        epoch_images = [
            *self.epoch_infer_dir.glob("Epoch_*.png"),
            *(self.epoch_infer_dir / "mosaic").glob("Epoch_*.png"),
        ]
        return [p for p in (*fixed, *curves, *evaluation) if p.is_file()] + sorted(epoch_images)

    def check_model(self, config: Config, what_to_do: str) -> Config | None:
        """The config this run was trained with (config.yaml; None if unreadable), after
        refusing `config` if its model section differs from it."""
        try:
            trained = load_config(self.config)
        except UserError:  # the saved model's shapes are still checked when it is loaded
            return None
        changed = [
            f"model.{key} {getattr(trained.model, key)}" for key in ModelConfig.model_fields
            if getattr(trained.model, key) != getattr(config.model, key)
        ]
        if changed:
            raise UserError(
                f"{self.root}: trained with {', '.join(changed)}, not as the config says; "
                f"{what_to_do}"
            )
        return trained

    def read_state(self) -> TrainState | None:
        """The training state kept in history.json, or None before the first epoch."""
        if not self.history.is_file():
            return None
        try:
            data = json.loads(self.history.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.history}: cannot read the run state: {exc}") from None
        if not isinstance(data, dict) or "epoch" not in data:
            raise UserError(f"{self.history}: not a flexunet run state (no 'epoch' key)")
        try:
            return TypeAdapter(TrainState).validate_python(data)
        except ValidationError as exc:
            raise UserError(f"{validation_message(str(self.history), exc)}: the run state is "
                            "damaged; train again with --overwrite") from None


@dataclass
class TrainState:
    """What history.json holds: the epochs done, their logs, and what --resume needs."""

    epochs: int
    epoch: int = 0
    status: str = "running"  # or interrupted, nan_loss, completed, early_stopped
    best_epoch: int = 0
    best_val_loss: float | None = None
    lr_wait: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "early_stopped")

    def describe(self) -> str:
        """'a finished run (12/12 epochs)' and the like, for messages."""
        done = "a finished run" if self.finished else "an unfinished run"
        return f"{done} ({self.epoch}/{self.epochs} epochs)"

    def record(self, logs: dict) -> None:
        """Append one epoch's logs (loss, metrics, val_*, learning_rate) to the history."""
        self.epoch += 1
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))


def prepare_run(run: RunFolder, *, resume: bool, overwrite: bool) -> TrainState | None:
    """Check the run folder before training; return the state to resume from (or None).

    A folder that holds an earlier run is refused unless `resume` (continue it) or
    `overwrite` (replace our own files in it; nothing else is touched).
    """
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other: choose one")
    state = run.read_state()
    if resume:
        if not run.last.is_file():
            raise UserError(f"{run.last}: nothing to resume; train without --resume")
        return state
    existing = run.training_outputs()
    if existing and not overwrite:
        raise UserError(
            f"{run.root} holds {state.describe() if state else 'a run'}: pass --resume to "
            "continue it or --overwrite to replace its files"
        )
    for path in existing:
        path.unlink()
    return None
