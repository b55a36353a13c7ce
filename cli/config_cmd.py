"""`flexunet config`: validate, show, schema and import of run configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.table import Table

from flexunet_k3.config import Config, load_config, validate
from flexunet_k3.errors import UserError, plural
from flexunet_k3.files import check_new_file, describe, write_text
from flexunet_k3.ini_import import import_ini

from .state import Overrides, console, errors, one_line

app = typer.Typer(help="Validate, show, export the schema of, or import run configs.")

ConfigFile = Annotated[Path, typer.Argument(help="A YAML run config.", show_default=False)]


@app.command("validate")
def validate_command(config: ConfigFile, overrides: Overrides = None) -> None:
    """Check a config: unknown keys, wrong types and bad values exit 2 with one line."""
    cfg = load_config(config, overrides)
    m = cfg.model
    console.print(
        f"{config}: valid ({m.name}, {m.image_height}x{m.image_width}x{m.image_channels}, "
        f"{plural(m.num_classes, 'class')}, {m.num_layers} levels)"
    )


@app.command("show")
def show_command(config: ConfigFile, overrides: Overrides = None) -> None:
    """Print the resolved config (defaults filled in, paths made absolute) as YAML."""
    typer.echo(load_config(config, overrides).to_yaml(), nl=False)


@app.command("schema")
def schema_command() -> None:
    """Print the JSON Schema of run configs (for editors' YAML completion)."""
    typer.echo(json.dumps(Config.model_json_schema(), indent=2))


@app.command("import")
def import_command(
    ini: Annotated[Path, typer.Argument(help="The original tool's train_eval_infer.config.")],
    output: Annotated[
        Path | None, typer.Option(
            "--output", "-o", help="YAML to write.", show_default="the INI's name, .yaml"
        )
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """Convert the original tool's INI config to a YAML run config; lists every unmapped key."""
    if not ini.is_file():
        raise UserError(f"{ini}: {describe(ini)}; give the INI file")
    output = output or ini.with_suffix(".yaml")
    check_new_file(output, overwrite, ini, "INI to import", "--output")
    data, unmapped = import_ini(ini, output)
    unmapped = [(one_line(key), one_line(why)) for key, why in unmapped]  # YAML comments below
    validate(data, f"{ini} (converted)")
    header = f"# Imported from {one_line(ini.name)} by `flexunet config import`.\n"
    if unmapped:
        header += "# Not mapped:\n" + "".join(f"#   {k}: {why}\n" for k, why in unmapped)
    text = header + yaml.safe_dump(data, sort_keys=False)
    write_text(output, text)
    if unmapped:
        title = f"{plural(len(unmapped), 'key')} not mapped"
        table = Table("key", "not mapped because", title=title)
        for key, why in unmapped:
            table.add_row(key, why)
        errors.print(table)
    console.print(f"wrote {output}")
