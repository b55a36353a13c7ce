"""Training curves in the original's format: eval/train_losses.csv, train_metrics.csv and plots."""

from __future__ import annotations

from pathlib import Path

from flexunet_k3.files import replacing, write_text

CURVES = {
    "train_losses": ("loss", "val_loss"),
    "train_metrics": ("dice_coef_multiclass", "val_dice_coef_multiclass"),
}


def write_curves(history: dict[str, list[float]], eval_dir: Path) -> None:
    """(Re)write both CSVs (`epoch,loss,val_loss`, epochs from 1) and their PNG plots."""
    for name, keys in CURVES.items():
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
