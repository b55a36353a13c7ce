"""The run folder (README, "A run folder"): its file names, the files it owns, its lock and
its state.

The manifest (`.flexunet-run.json`) names the files flexunet wrote there; train replaces no
other file without --overwrite, and --overwrite removes no other file. The lock
(`.flexunet-run.lock`) keeps a second run out while one writes. Importing this module does not
import keras.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated

import yaml
from pydantic import BeforeValidator, TypeAdapter, ValidationError

from flexunet_k3.config import (
    MAX_CONFIG_BYTES,
    Config,
    ModelConfig,
    load_config,
    validation_message,
)
from flexunet_k3.errors import UserError, listing
from flexunet_k3.files import (
    MAX_JSON_BYTES,
    check_output_folder,
    describe,
    json_text,
    process_alive,
    read_bytes,
    refuse_non_files,
    remove_abandoned,
    write_json,
)
from flexunet_k3.plots import CURVE_NAMES

EVALUATION_FILES = (
    "evaluation.csv", "evaluation.json", "evaluation_per_image.csv", "evaluation_per_case.csv"
)
MANIFEST = ".flexunet-run.json"
LOCK = ".flexunet-run.lock"
STATE_MEMBER = "flexunet-state.json"  # the run state as of models/last.keras, inside it


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

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK

    def fixed_outputs(self) -> list[Path]:
        """The files every training writes: config.yaml, models, history.json, the curves."""
        curves = [self.eval_dir / f"{name}.{ext}" for name in CURVE_NAMES for ext in ("csv", "png")]
        return [self.config, self.best, self.last, self.history, *curves]

    def epoch_images(self, epoch: int, stems: Iterable[str]) -> list[Path]:
        """Epoch-change inference's masks of `epoch` (1-based), then its mosaic."""
        folder = self.epoch_infer_dir
        return [*(folder / f"Epoch_{epoch}_{stem}.png" for stem in stems),
                folder / "mosaic" / f"Epoch_{epoch}.png"]

    def owned(self) -> set[Path]:
        """The files flexunet wrote here, as the manifest records them. A run folder from before
        the manifest (a readable history.json, no manifest) owns its training and evaluation
        files, known by their names, and a config.yaml that reads as train wrote it."""
        if self.manifest.exists():
            return {self.root / name for name in self._manifest_names()}
        try:
            if self.read_state() is None:
                return set()
        except UserError:  # a history.json that is not ours
            return set()
        known = [*self.fixed_outputs(), *(self.root / name for name in EVALUATION_FILES)]
        if not _written_by_train(self.config):  # a user's own: comments, keys left out
            known.remove(self.config)
        epoch_images = [*self.epoch_infer_dir.glob("Epoch_*.png"),
                        *(self.epoch_infer_dir / "mosaic").glob("Epoch_*.png")]
        return {path for path in (*known, *epoch_images) if path.is_file()}

    def claim(self, paths: Iterable[Path]) -> None:
        """Record `paths` (under the root) in the manifest as ours, besides those it owns."""
        names = {path.relative_to(self.root).as_posix() for path in [*paths, *self.owned()]}
        write_json(self.manifest, {"files": sorted(names)})

    def owned_in(self, folder: Path) -> set[Path]:
        """The files this run owns in `folder` (spelt as under `folder`: a command writing
        there may replace them); none where `folder` is not in the run folder."""
        inside = self._inside(folder)
        if inside is None:
            return set()
        return {folder / path.relative_to(inside) for path in self.owned()
                if path.is_relative_to(inside)}

    def claim_in(self, folder: Path, names: Iterable[str]) -> None:
        """Record the files `names` (relative to `folder`) as ours, where `folder` lies in the
        run folder: `train --overwrite` then removes them with the run."""
        inside = self._inside(folder)
        if inside is not None:
            self.claim(inside / name for name in names)

    def _inside(self, folder: Path) -> Path | None:
        """`folder` spelt from the root (links resolved), or None if it is not in the run
        folder."""
        if not self.contains(folder):
            return None
        return self.root / folder.resolve().relative_to(self.root.resolve())

    def _manifest_names(self) -> set[str]:
        hint = "delete it and move this run's files away by hand"
        try:
            names = json.loads(read_bytes(self.manifest, hint, MAX_JSON_BYTES))["files"]
        except (ValueError, KeyError, TypeError):
            names = None
        if not isinstance(names, list) or not all(map(_is_file_name, names)):
            raise UserError(f"{self.manifest}: damaged (it lists the files flexunet wrote here); "
                            f"{hint}")
        return set(names)

    def contains(self, path: Path) -> bool:
        """Whether `path` is the run folder or lies inside it."""
        return path.resolve().is_relative_to(self.root.resolve())

    def locked_for(self, folder: Path, command: str) -> AbstractContextManager:
        """The run folder's lock (see `locked`) while `command` writes into `folder`, if that
        lies in the run folder."""
        return self.locked(command) if self.contains(folder) else nullcontext()

    @contextmanager
    def locked(self, command: str) -> Iterator[None]:
        """Hold the run folder's lock while `command` writes to it; taken before anything is
        written, released however the block ends. Holding it, remove the temporaries that
        processes killed outright left in the run folder.

        The lock file holds the pid, host, start time and command. A live holder (or one on
        another host) is refused with one line naming it; a lock whose process is gone from
        this host is taken over with a warning.
        """
        check_output_folder(self.root)
        made = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command})
        while not _create(self.lock_file, mine):
            self._take_over_if_stale()
        try:
            remove_abandoned(self.root, recursive=True)
            yield
        finally:
            try:
                if self.lock_file.read_text(encoding="utf-8") == mine:
                    self.lock_file.unlink()
            except FileNotFoundError:
                pass
            if made and not any(self.root.iterdir()):
                self.root.rmdir()

    def _take_over_if_stale(self) -> None:
        """Remove the lock if its process is gone from this host, with a warning; else refuse."""
        if not self.lock_file.exists():
            return  # released meanwhile
        hint = "wait for it, or delete it if no run is going on"
        try:  # bounded: the lock may be anything (a pipe would block a plain read)
            holder = json.loads(read_bytes(self.lock_file, hint, 4096))
            pid, host, since, command = (holder[key] for key in ("pid", "host", "since", "command"))
            if type(pid) is not int or not 0 < pid < 2**31:  # what os.kill takes
                raise ValueError(pid)
        except (ValueError, KeyError, TypeError):  # being written, or damaged
            raise UserError(f"{self.root}: in use by another run (its lock {self.lock_file} is "
                            "unreadable); wait for it, or delete that file if no run is going "
                            "on") from None
        if host != socket.gethostname() or process_alive(pid):
            raise UserError(f"{self.root}: in use by {command} (pid {pid} on {host}, since "
                            f"{since}); wait for it to finish, or delete {self.lock_file} if that "
                            "process is gone")
        warnings.warn(f"{self.root}: taking over the stale lock of pid {pid} ({command} since "
                      f"{since}): that process is gone", stacklevel=4)
        self.lock_file.unlink(missing_ok=True)

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
        """The training state (None before the first epoch): history.json's, or the one saved
        inside models/last.keras where that is further on (a process killed between the
        two)."""
        kept, saved = self._history_state(), self.checkpoint_state()
        return saved if saved and (kept is None or saved.epoch > kept.epoch) else kept

    def history_behind(self, state: TrainState) -> bool:
        """Whether history.json holds fewer epochs than `state` (read from the checkpoint)."""
        kept = self._history_state()
        return kept is None or kept.epoch < state.epoch

    def checkpoint_state(self) -> TrainState | None:
        """The state saved in models/last.keras; None where there is none, or it is unreadable
        (a damaged model is refused when it is loaded)."""
        if not self.last.is_file():
            return None
        try:
            with zipfile.ZipFile(self.last) as archive:
                if archive.getinfo(STATE_MEMBER).file_size > MAX_JSON_BYTES:
                    return None
                return _STATE.validate_json(archive.read(STATE_MEMBER))
        except (OSError, KeyError, zipfile.BadZipFile, ValidationError, ValueError):
            return None

    def _history_state(self) -> TrainState | None:
        """The state in history.json, or None where it is not there."""
        if not self.history.exists():
            return None
        raw = read_bytes(self.history, "move it away", MAX_JSON_BYTES)
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise UserError(f"{self.history}: cannot read the run state: {exc}") from None
        if not isinstance(data, dict) or "epoch" not in data:
            raise UserError(f"{self.history}: not a flexunet run state (no 'epoch' key)")
        try:
            return _STATE.validate_python(data)
        except ValidationError as exc:
            raise UserError(f"{validation_message(str(self.history), exc)}: the run state is "
                            "damaged; train again with --overwrite") from None


def _nan_if_null(value):
    return math.nan if value is None else value


# an epoch's logged value; JSON has no NaN (a class no image holds scores NaN): written as null
Logged = Annotated[float, BeforeValidator(_nan_if_null)]


@dataclass
class TrainState:
    """What history.json holds: the epochs done, their logs, and what --resume needs."""

    epochs: int
    epoch: int = 0
    status: str = "running"  # or interrupted, nan_loss, completed, early_stopped
    best_epoch: int = 0
    best_val_loss: float | None = None
    lr_wait: int = 0
    history: dict[str, list[Logged]] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "early_stopped")

    def describe(self) -> str:
        """'a finished run (12/12 epochs)' and the like, for messages."""
        done = "a finished run" if self.finished else "an unfinished run"
        return f"{done} ({self.epoch}/{self.epochs} epochs)"

    def spent(self, epochs: int, patience: int) -> list[str]:
        """The settings that leave this run nothing to train on --resume: train.epochs where
        it ran them all, train.patience where it stopped early and would stop again at once."""
        spent = ["train.epochs"] if self.epoch >= epochs else []
        if self.status == "early_stopped" and self.epoch - self.best_epoch >= patience:
            spent.append("train.patience")
        return spent

    def record(self, logs: dict) -> None:
        """Append one epoch's logs (loss, metrics, val_*, learning_rate) to the history."""
        self.epoch += 1
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    def as_member(self) -> dict[str, str]:
        """The state as a file of the checkpoint saved with it (`save_model`'s `extra`)."""
        return {STATE_MEMBER: json_text(asdict(self))}


_STATE = TypeAdapter(TrainState)


def _written_by_train(path: Path) -> bool:
    """Whether `path` holds, exactly, a resolved config as `flexunet train` writes it."""
    try:
        text = read_bytes(path, "", MAX_CONFIG_BYTES).decode("utf-8")
        return Config.model_validate(yaml.safe_load(text)).to_yaml() == text
    except (UserError, ValueError, OSError, yaml.YAMLError, RecursionError):  # decoding too
        return False


def _is_file_name(name) -> bool:
    """Whether a manifest entry names a path inside the run folder."""
    if not isinstance(name, str):
        return False
    path = PurePosixPath(name)
    return bool(path.parts) and not path.is_absolute() and ".." not in path.parts


def _create(path: Path, text: str) -> bool:
    """Create `path` holding `text` if no such file exists (atomically); whether it did."""
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(text)
    return True


def prepare_run(
    run: RunFolder, *, resume: bool, overwrite: bool, epochs: int, infer_stems: list[str]
) -> TrainState | None:
    """Check the run folder before training (writing nothing); return the state to resume
    from (or None).

    Refused: a file that training would write but that flexunet did not (a user's
    config.yaml even with `overwrite`: it may be the config being trained; any other unless
    `overwrite`), and a folder holding an earlier run unless `resume` or `overwrite`.
    """
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other: choose one")
    refuse_non_files([run.manifest, *run.fixed_outputs()],
                     "move it away, or choose another train.output_dir")
    owned = run.owned()
    state = run.read_state() if run.history in owned else None
    first = state.epoch + 1 if resume and state else 1
    planned = [*run.fixed_outputs(),
               *(path for epoch in range(first, epochs + 1)
                 for path in run.epoch_images(epoch, infer_stems))]
    strangers = [path for path in planned if path.exists() and path not in owned]
    if run.config in strangers:
        raise UserError(
            f"{run.config}: not written by flexunet train (your own config?), where train "
            "records the run's config; set train.output_dir to a folder of its own, e.g. "
            "runs/NAME (--overwrite does not replace this file)"
        )
    if strangers and not overwrite:
        shown = listing(path.relative_to(run.root).as_posix() for path in strangers)
        them = "it" if len(strangers) == 1 else "them"
        raise UserError(
            f"{run.root}: holds {shown}, not written by flexunet train; move {them} away, "
            f"choose another train.output_dir, or pass --overwrite to replace {them}"
        )
    earlier = [path for path in owned if path.is_file() and path != run.config]
    resumable = run.last in owned and run.last.is_file()
    if resume:
        if not resumable:
            fix = "start again with --overwrite" if earlier else "train without --resume"
            raise UserError(f"{run.last}: nothing to resume ({describe(run.last)}); {fix}")
        return state
    if earlier and not overwrite:
        held = state.describe() if state else "a run"
        if not resumable:  # a NaN loss or a Ctrl-C in the first epoch: no checkpoint
            raise UserError(f"{run.root} holds {held} with no checkpoint to resume "
                            "(models/last.keras): pass --overwrite to start again")
        raise UserError(f"{run.root} holds {held}: pass --resume to continue it or --overwrite "
                        "to replace its files")
    return None


def start_writing(run: RunFolder, *, overwrite: bool) -> None:
    """Just before training writes its first file: with `overwrite`, remove the earlier run's
    files (those the manifest names, nothing else); record the fixed outputs as ours."""
    if overwrite:
        for path in run.owned():
            path.unlink(missing_ok=True)
        run.manifest.unlink(missing_ok=True)
    run.claim(run.fixed_outputs())
