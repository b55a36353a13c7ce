"""Training curves: eval/train_losses.csv and train_metrics.csv in the original's format, and
eval/train_foreground.csv, the foreground Dice per class (train and valid) that the original's
background-inclusive metric hides; each with its PNG plot."""

from __future__ import annotations

from pathlib import Path

from flexunet_k3.files import replacing, write_text

CURVES = {
    "train_losses": ("loss", "val_loss"),
    "train_metrics": ("dice_coef_multiclass", "val_dice_coef_multiclass"),
}
FOREGROUND = "train_foreground"
CURVE_NAMES = (*CURVES, FOREGROUND)


def foreground_keys(history: dict[str, list[float]]) -> tuple[str, ...]:
    """The per-class foreground Dice columns (dice_tumor, val_dice_tumor, ...)."""
    names = [key for key in history if key.startswith("dice_") and key != "dice_coef_multiclass"]
    return tuple(key for name in names for key in (name, f"val_{name}"))


def write_curves(history: dict[str, list[float]], eval_dir: Path) -> None:
    """(Re)write the CSVs (`epoch,loss,val_loss`, epochs from 1) and their PNG plots."""
    for name, keys in {**CURVES, FOREGROUND: foreground_keys(history)}.items():
        columns = {key: history.get(key, []) for key in keys}
        lines = ["epoch," + ",".join(keys)]
        for epoch, values in enumerate(zip(*columns.values(), strict=True), 1):
            lines.append(f"{epoch}," + ",".join(str(float(v)) for v in values))
        write_text(eval_dir / f"{name}.csv", "\n".join(lines) + "\n")
        plot_curves(columns, name.replace("_", " "), eval_dir / f"{name}.png")


def plot_curves(columns: dict[str, list[float]], title: str, path: Path) -> None:
    """A small line plot per column against the epoch (Agg canvas, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, values in columns.items():
        axes.plot(range(1, len(values) + 1), values, marker=".", label=label)
    axes.set_xlabel("epoch")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with replacing(path) as temporary:
        figure.savefig(temporary, format="png")
