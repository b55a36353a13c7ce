"""`flexunet train | evaluate | infer`: thin commands over training, evaluation and inference.

Keras is imported inside the commands, after the backend is fixed.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flexunet_k3.config import Config, load_config
from flexunet_k3.errors import UserError, plural
from flexunet_k3.files import refuse_overwriting
from flexunet_k3.interrupt import deferred
from flexunet_k3.run_folder import EVALUATION_FILES, RunFolder

from .state import (
    ConfigOption,
    Overrides,
    config_or_defaults,
    console,
    errors,
    options,
    print_warning,
    use_backend,
    warnings_as_lines,
)


def _start(config: Path, overrides: list[str] | None) -> Config:
    """Load the config and fix the backend (before keras is imported)."""
    cfg = load_config(config, overrides)
    use_backend()
    return cfg


def _say(text: str) -> None:
    console.print(text, highlight=False)


def train(
    config: ConfigOption,
    overrides: Overrides = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in train.output_dir from models/last.keras.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Remove the earlier run's files in train.output_dir and replace "
                           "others of the names train writes (not a config.yaml it did not "
                           "write).")
    ] = False,
) -> None:
    """Train a model: checkpoints, curves, history and epoch-change masks in train.output_dir."""
    with deferred():  # Ctrl-C waits for a step or epoch boundary (also while keras loads)
        cfg = _start(config, overrides)
        from flexunet_k3.training import train as run_training

        run = RunFolder(cfg.train.output_dir)
        try:
            with warnings_as_lines():
                result = run_training(cfg, resume=resume, overwrite=overwrite)
        except KeyboardInterrupt:
            errors.print(_after_ctrl_c(run, config, overrides))
            raise
    state = result.state
    if not result.writes:
        return
    if result.model is None:
        spent = state.spent(cfg.train.epochs, cfg.train.patience)
        why = (f", early stopped {plural(state.epoch - state.best_epoch, 'epoch')} after its "
               f"best (epoch {state.best_epoch})" if "train.patience" in spent else "")
        _say(f"nothing to train: {run.root} holds {state.describe()}{why}; raise "
             f"{' and '.join(spent)} to train longer")
        return
    _say(
        f"{state.status.replace('_', ' ')} after {plural(state.epoch, 'epoch')}; best val_loss "
        f"{state.best_val_loss:.4g} at epoch {state.best_epoch}; outputs in {run.root}"
    )


def _after_ctrl_c(run: RunFolder, config: Path, overrides: list[str] | None) -> str:
    """What an interrupted `flexunet train` left, and how to go on (the same --set values)."""
    state = run.read_state()  # a second Ctrl-C may have cut the epoch's records short
    if state is None:
        return "interrupted before training started"
    if state.finished:  # an earlier run's, or this one's, stopped as it finished
        return f"interrupted; {run.root} holds {state.describe()}"
    if not run.last.is_file():
        return "interrupted in the first epoch: nothing to resume; start again with --overwrite"
    backend = ["--backend", options.backend] if options.backend else []
    command = ["flexunet", *backend, "train", "--config", str(config)]
    for text in overrides or []:
        command += ["--set", text]
    return f"{run.last} holds epoch {state.epoch}; continue with: {shlex.join(command)} --resume"


def _best_model(run: RunFolder, cfg: Config, command: str):
    """The run's models/best.keras for `command`, on the devices of train.distribution; refused
    if the config's model section is not the one the run was trained with."""
    import keras

    from flexunet_k3.distribution import start
    from flexunet_k3.model_io import load_trained_model

    start(cfg, keras.backend.backend(), command)
    run.check_model(cfg, "use the config the run was trained with (its config.yaml)")
    return load_trained_model(run.best, cfg)


Overwrite = Annotated[
    bool, typer.Option(help="Replace files of the same names already in the output folder.")
]
Tolerance = Annotated[
    float, typer.Option("--tolerance-mm", min=0.0, max=1000.0,
                        help="Surface Dice tolerance (mm), with --volumes.")
]


def evaluate(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="A YAML run config.")
    ] = None,
    overrides: Overrides = None,
    predictions: Annotated[
        Path | None,
        typer.Option(
            help="Score these mask files (class colors, or .npz class ids) instead of a model "
            "(with --masks)."
        ),
    ] = None,
    masks: Annotated[
        Path | None, typer.Option(help="Ground-truth masks for --predictions, paired by name.")
    ] = None,
    volumes: Annotated[
        str | None,
        typer.Option(
            help="Whole-volume scores: label NIfTIs (a file or folder) to score against "
            "--labels; alone, with --config, the trained model on the held-out test patients.",
            show_default=False,
        ),
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Ground-truth label NIfTIs for --volumes, paired by name.")
    ] = None,
    source: Annotated[
        Path | None, typer.Option(help="The Decathlon task, if moved since `prepare msd` "
                                  "(--volumes alone).", show_default="splits.json's source")
    ] = None,
    tolerance_mm: Tolerance = 1.0,
    output: Annotated[
        Path | None,
        typer.Option(help="Folder for evaluation.*.",
                     show_default="the run folder, or evaluation/ beside the predictions"),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Score models/best.keras on the test split, masks against ground truth, or volumes.

    Whole volumes with --volumes: the held-out patients, or label files against --labels."""
    if volumes is not None or labels is not None:
        _evaluate_volumes(config, overrides, volumes, labels, source, tolerance_mm, output,
                          overwrite)
        return
    from flexunet_k3.evaluation import pair_masks, score_masks, summary_rows, write_report

    if predictions is not None or masks is not None:
        if predictions is None or masks is None:
            raise UserError("--predictions and --masks go together: give both folders")
        cfg = config_or_defaults(config, overrides)
        pairs = pair_masks(predictions, masks)
        folder = output or predictions / "evaluation"
        refuse_overwriting(folder, EVALUATION_FILES, overwrite)  # before the scoring
        with warnings_as_lines():
            report = score_masks(pairs, cfg.data.classes)
        write_report(report, folder)
    elif config is None:
        raise UserError("give --config (to score the trained model) or --predictions and --masks")
    else:
        with deferred():  # Ctrl-C waits for the next batch
            cfg = _start(config, overrides)
            from flexunet_k3.evaluation import evaluate_model

            run = RunFolder(cfg.train.output_dir)
            folder = output or run.root
            with warnings_as_lines(), run.locked_for(folder, "flexunet evaluate"):
                refuse_overwriting(folder, EVALUATION_FILES, overwrite, run.owned_in(folder))
                report = evaluate_model(_best_model(run, cfg, "flexunet evaluate"), cfg)
                run.claim_in(folder, EVALUATION_FILES)
                write_report(report, folder)
    summary = report.summary
    counts = f"{plural(summary['images'], 'image')}, {plural(summary['cases'], 'case')}"
    table = Table("metric", "value", "counted", title=f"evaluation ({counts})")
    for row in summary_rows(report.summary):
        table.add_row(*row)
    console.print(table)
    _say(f"wrote {folder / 'evaluation.csv'} and evaluation.json, evaluation_per_image.csv, "
         "evaluation_per_case.csv beside it")


def _evaluate_volumes(config, overrides, volumes, labels, source, tolerance_mm, output,
                      overwrite) -> None:
    """`evaluate --volumes PRED --labels GT`, or `evaluate --config F --volumes`."""
    from flexunet_k3 import volume_evaluation as ve

    if volumes:  # label files to score
        if labels is None:
            raise UserError("--volumes PRED needs --labels GT (the ground-truth label NIfTIs); "
                            "or give --volumes alone with --config to score the trained model")
        cfg = config_or_defaults(config, overrides)
        predictions = Path(volumes)
        beside = predictions if predictions.is_dir() else predictions.parent
        folder = output or beside / "evaluation"
        refuse_overwriting(folder, ve.REPORT_FILES, overwrite)
        report = ve.evaluate_volume_files(predictions, labels,
                                          [spec.name for spec in cfg.data.classes], tolerance_mm)
        ve.write_volume_report(report, folder)
    else:
        if labels is not None or config is None:
            raise UserError("--volumes alone scores the trained model on the held-out test "
                            "patients: give --config (and no --labels), or --volumes PRED "
                            "--labels GT")
        with deferred():
            from flexunet_k3.volume_inference import dataset_window, held_out_volumes

            cfg = load_config(config, overrides)
            inputs = held_out_volumes(cfg, source)
            use_backend()  # after the inputs are found: a bad path is refused at once
            window = dataset_window(cfg)
            run = RunFolder(cfg.train.output_dir)
            folder = output or run.root
            with warnings_as_lines(), run.locked_for(folder, "flexunet evaluate"):
                refuse_overwriting(folder, ve.REPORT_FILES, overwrite, run.owned_in(folder))
                model = _best_model(run, cfg, "flexunet evaluate")
                report = ve.evaluate_held_out(model, cfg, inputs, window, tolerance_mm)
                run.claim_in(folder, ve.REPORT_FILES)
                ve.write_volume_report(report, folder)
    table = Table("metric", "mean ± std", "median", "counted",
                  title=f"whole-volume scores ({plural(report.summary['volumes'], 'volume')}, "
                  f"surface Dice at {tolerance_mm:g} mm)")
    for row in ve.summary_rows(report.summary):
        table.add_row(*row)
    console.print(table)
    _say(f"wrote {folder / ve.REPORT_FILES[0]} and {ve.REPORT_FILES[1]} beside it")


def infer(
    config: ConfigOption,
    overrides: Overrides = None,
    images: Annotated[
        Path | None, typer.Option(help="Images to segment.",
                                  show_default="infer.images_dir, else the test split")
    ] = None,
    volumes: Annotated[
        Path | None,
        typer.Option(help="CT volumes to segment: a .nii/.nii.gz file, a folder of them, or a "
                     "Decathlon task folder or .tar (its imagesTs; with --split test, the "
                     "held-out patients).", show_default=False),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="'test': the patients `prepare msd` held out (the dataset's "
                     "splits.json), read from the source it recorded or from --volumes.",
                     show_default=False),
    ] = None,
    probabilities: Annotated[
        bool, typer.Option(help="With volumes, also write NAME_probabilities.nii.gz.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(help="Folder for the masks.",
                     show_default="infer.output_dir, else RUN/infer (RUN/infer_volumes)"),
    ] = None,
    overlay: Annotated[
        bool | None,
        typer.Option("--overlay/--no-overlay", help="Also write overlays and a mosaic.",
                     show_default="infer.overlay"),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Segment a folder of images or CT volumes with models/best.keras.

    Images get palette PNG masks named like them; volumes get label NIfTIs on their grid."""
    if volumes is not None or split is not None:
        _infer_volumes(config, overrides, volumes, split, images, probabilities, output,
                       overwrite)
        return
    with deferred():  # Ctrl-C waits for the next batch
        cfg = _start(config, overrides)
        from flexunet_k3.inference import infer_folder

        images_dir = images or cfg.infer_images_dir()
        run = RunFolder(cfg.train.output_dir)
        output_dir = output or cfg.infer.output_dir or run.infer_dir
        with warnings_as_lines(), run.locked_for(output_dir, "flexunet infer"):
            model = _best_model(run, cfg, "flexunet infer")
            result = infer_folder(
                model, cfg, images_dir, output_dir,
                with_overlays=cfg.infer.overlay if overlay is None else overlay,
                overwrite=overwrite, owned=run.owned_in(output_dir),
            )
            run.claim_in(output_dir, result.files)
    if result.skipped:
        print_warning(f"skipped {plural(len(result.skipped), 'non-image file')} in "
                      f"{images_dir}: " + ", ".join(result.skipped))
    _say(f"wrote {plural(result.written, 'mask')} to {result.output_dir}")


def _infer_volumes(config, overrides, volumes, split, images, probabilities, output,
                   overwrite) -> None:
    if images is not None:
        volume_option = "--volumes" if volumes is not None else "--split"
        raise UserError(f"--images and {volume_option} exclude each other: give one")
    if split not in (None, "test"):
        raise UserError(f"--split {split}: only 'test' (the held-out patients) is known")
    with deferred():
        from flexunet_k3.volume_inference import (
            dataset_window,
            held_out_volumes,
            infer_volumes,
            volumes_at,
        )

        cfg = load_config(config, overrides)
        inputs = held_out_volumes(cfg, volumes) if split else volumes_at(volumes)
        use_backend()  # after the inputs are found: a bad path is refused at once
        run = RunFolder(cfg.train.output_dir)
        output_dir = output or cfg.infer.output_dir or run.volumes_dir
        window = dataset_window(cfg)
        with warnings_as_lines(), run.locked_for(output_dir, "flexunet infer"):
            model = _best_model(run, cfg, "flexunet infer")
            result = infer_volumes(model, cfg, inputs, output_dir, window=window,
                                   probabilities=probabilities, overwrite=overwrite,
                                   owned=run.owned_in(output_dir))
            run.claim_in(output_dir, result.files)
    _say(f"wrote {plural(len(result.written), 'label volume')} to {result.output_dir}")
