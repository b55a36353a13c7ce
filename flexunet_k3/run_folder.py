"""The run folder (DESIGN.md, "Outputs of a run"): its file names, its state, atomic writes.

Importing this module does not import keras.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with replacing(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: Path, data) -> None:
    """Write a JSON file atomically (NaN written as null)."""
    write_text(path, json.dumps(_nan_to_none(data), indent=2) + "\n")


def _nan_to_none(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(item) for item in value]
    return value


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

    def evaluation(self, suffix: str) -> Path:
        """evaluation.csv, evaluation.json, evaluation_per_image.csv, ...: `suffix` after it."""
        return self.root / f"evaluation{suffix}"

    def training_outputs(self) -> list[Path]:
        """The files a training run writes that exist now (what --overwrite replaces)."""
        fixed = [self.best, self.last, self.history]
        curves = [self.eval_dir / f"train_{kind}.{ext}"
                  for kind in ("losses", "metrics") for ext in ("csv", "png")]
        evaluation = [self.evaluation(s) for s in
                      (".csv", ".json", "_per_image.csv", "_per_case.csv")]
        epoch_images = sorted(self.epoch_infer_dir.glob("Epoch_*.png"))
        return [p for p in (*fixed, *curves, *evaluation) if p.is_file()] + epoch_images

    def read_state(self) -> dict | None:
        """The training state kept in history.json, or None before the first epoch."""
        if not self.history.is_file():
            return None
        try:
            state = json.loads(self.history.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{self.history}: cannot read the run state: {exc}") from None
        if not isinstance(state, dict) or "epoch" not in state:
            raise UserError(f"{self.history}: not a flexunet run state (no 'epoch' key)")
        return state

    def require_model(self, path: Path) -> Path:
        """`path` if it exists, else a UserError saying to train first."""
        if not path.is_file():
            raise UserError(f"{path}: no trained model here; run `flexunet train` first")
        return path


FINISHED = ("completed", "early_stopped")


def describe(state: dict | None) -> str:
    """'a finished run (12/12 epochs)' and the like, for messages."""
    if state is None:
        return "a run's files"
    done = "a finished run" if state.get("status") in FINISHED else "an unfinished run"
    return f"{done} ({state['epoch']}/{state.get('epochs', '?')} epochs)"


def prepare_run(run: RunFolder, *, resume: bool, overwrite: bool) -> dict | None:
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
            f"{run.root} holds {describe(state)}: pass --resume to continue it or "
            "--overwrite to replace its files"
        )
    for path in existing:
        path.unlink()
    return None
