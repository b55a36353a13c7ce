"""The run folder (README, "A run folder"): its file names and its state.

Importing this module does not import keras.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from flexunet_k3.config import Config, ModelConfig, load_config, validation_message
from flexunet_k3.errors import UserError
from flexunet_k3.files import write_json
from flexunet_k3.plots import CURVE_NAMES

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

    @property
    def volumes_dir(self) -> Path:
        return self.root / "infer_volumes"

    def training_outputs(self) -> list[Path]:
        """Our files from an earlier run that exist now (what --overwrite replaces)."""
        fixed = [self.best, self.last, self.history]
        curves = [self.eval_dir / f"{name}.{ext}" for name in CURVE_NAMES for ext in ("csv", "png")]
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
