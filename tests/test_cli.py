"""The command line where it needs no backend: start-up imports, help, config commands, and bad
input that is refused before keras is imported (`info` and `summary`: test_cli_backend.py)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error, flexunet

from flexunet_k3 import backend as backend_module
from flexunet_k3.errors import UserError

REPO = Path(__file__).resolve().parents[1]
HEAVY = re.compile(r"\|\s+(keras|tensorflow|jax|jaxlib|torch)(\.|$)")


def test_cli_import_loads_no_keras_or_backend(tmp_path):
    # outside the checkout, so that the installed package (with flexunet_k3.cli) is imported
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import flexunet_k3.cli.app"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    heavy = [line for line in done.stderr.splitlines() if HEAVY.search(line)]
    assert "flexunet_k3.cli.app" in done.stderr and not heavy, heavy[:5]


def test_help_and_version():
    assert "prepare" in flexunet("--help").stdout or "config" in flexunet("--help").stdout
    assert flexunet("--version").stdout.strip().startswith("flexunet-k3 ")


def test_unknown_backend_is_one_line(monkeypatch):
    assert_one_line_error(flexunet("--backend", "mxnet", "info"), "unknown backend 'mxnet'")
    with pytest.raises(UserError, match=r"^unknown backend '': choose one of"):
        backend_module.select_backend("")  # `--backend ""`, not the default
    monkeypatch.setenv("KERAS_BACKEND", "bogus")
    with pytest.raises(UserError, match=r"^unknown backend 'bogus' \(KERAS_BACKEND\): choose"):
        backend_module.select_backend()


def test_backend_not_installed_is_one_line(monkeypatch):
    monkeypatch.delitem(sys.modules, "keras", raising=False)
    monkeypatch.setattr(backend_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"backend 'jax' is not installed: pip install"):
        backend_module.select_backend("jax")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("model:\n  colour: 3\n", "model.colour: unknown key"),
        ("train:\n  epochs: ten\n", "train.epochs: Input should be a valid integer"),
        ("model:\n  base_kernels: 4\n", "model.base_kernels: kernel sizes must be odd"),
    ],
)
def test_config_validate_bad_config_exits_2(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert_one_line_error(flexunet("config", "validate", str(path)), str(path), fragment)


def test_config_validate_missing_file_exits_2(tmp_path):
    assert_one_line_error(
        flexunet("config", "validate", str(tmp_path / "gone.yaml")),
        "gone.yaml: not found; give the YAML config file",
    )


def test_summary_with_bad_override_exits_2():
    done = flexunet(
        "summary", "-c", str(REPO / "configs" / "lung.yaml"), "--set", "model.num_layers=0"
    )
    assert_one_line_error(done, "model.num_layers")


def test_usage_errors_are_one_line_naming_the_help_to_read(tmp_path):
    assert_one_line_error(flexunet("trian"), "No such command 'trian'", "(see flexunet --help)")
    assert_one_line_error(flexunet("train"), "'--config' / '-c' (see flexunet train --help)")
    assert_one_line_error(
        flexunet("prepare", "synthetic", "-o", str(tmp_path), "--cases", "many"), "'--cases'"
    )
    alone = flexunet("prepare")  # a command group alone shows its help
    assert alone.returncode == 2 and "synthetic" in alone.stdout and not alone.stderr


def test_a_file_in_the_way_of_an_output_folder_is_one_line(tmp_path):
    ini, blocker = tmp_path / "lung.config", tmp_path / "file"
    ini.write_text("[model]\nimage_width = 64\nimage_height = 64\nnum_layers = 4\n")
    blocker.write_text("mine")
    done = flexunet("config", "import", str(ini), "-o", str(blocker / "lung.yaml"))
    assert_one_line_error(done, f"{blocker}", "is a file, not a folder")
    assert blocker.read_text() == "mine"


def test_config_show_applies_overrides():
    done = flexunet(
        "config", "show", str(REPO / "configs" / "lung.yaml"), "--set", "train.epochs=7"
    )
    assert done.returncode == 0 and "epochs: 7" in done.stdout


def test_config_schema_is_json():
    import json

    assert "properties" in json.loads(flexunet("config", "schema").stdout)


def test_an_errors_first_line_stands_for_it_in_one_line_messages():
    from flexunet_k3.errors import first_line

    assert first_line(OSError("bad header:\n  tried gzip\n  tried bz2")) == "bad header"
    assert first_line(ValueError("x" * 300), typed=True) == "ValueError: " + "x" * 197 + "..."
    assert first_line(KeyError(), typed=True) == first_line(KeyError()) == "KeyError"


def test_benchmark_bad_options_exit_2_with_one_line(tiny_config):
    for option, value in (("--backends", "tf"), ("--precision", "float64"), ("--jit", "maybe")):
        done = flexunet("benchmark", "--config", str(tiny_config), option, value)
        assert_one_line_error(done, option, repr(value))


def test_benchmark_backends_all_stands_for_the_three_each_once():
    from flexunet_k3.cli.benchmark_cmd import _backend_list

    assert _backend_list("all") == ["tensorflow", "jax", "torch"]
    assert _backend_list("torch, all,jax") == ["torch", "tensorflow", "jax"]
    assert _backend_list("jax,mall") == ["jax", "mall"]  # refused afterwards, by name


class ResourceExhaustedError(Exception):
    """Named as TensorFlow's out-of-memory error (the CLI knows it by name)."""


@pytest.mark.parametrize("error", [
    MemoryError(), ResourceExhaustedError("OOM when allocating tensor with shape[11,11]"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"),
])
def test_running_out_of_memory_is_one_line_naming_what_to_lower(monkeypatch, capsys, error):
    from flexunet_k3 import config
    from flexunet_k3.cli.app import run

    def load_config(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(config, "load_config", load_config)
    assert run(["summary", "--config", "any.yaml"]) == 2
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("error: out of memory (") and "lower train.batch_size" in stderr


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path,
                                                                            monkeypatch):
    from flexunet_k3 import files

    monkeypatch.setattr(files.os, "access", lambda path, mode: False)  # as on a read-only mount
    with pytest.raises(UserError, match=f"{tmp_path}: cannot be written to"):
        files.check_new_file(tmp_path / "new" / "rows.json", False, tmp_path / "c.yaml",
                             "config", "--json")


def test_benchmark_devices_count_once_and_rows_name_the_default_device():
    from flexunet_k3.benchmark import _default_device
    from flexunet_k3.cli.benchmark_cmd import _device_counts

    assert _device_counts("1,01,001,2", batch=4) == [1, 2]
    assert _default_device(["/device:CPU:0", "/device:CPU:1"]) == "/device:CPU:0"
    assert _default_device(["cpu", "cuda:0", "cuda:1"]) == "cuda:0"


def test_ctrl_c_while_the_command_line_loads_is_one_line(monkeypatch, capsys):
    import builtins

    import flexunet_k3.cli as cli

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "app":  # `from .app import main`, as Ctrl-C lands while it loads
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(SystemExit) as caught:
        cli.main()
    assert caught.value.code == 130 and capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize(("status", "said"), [
    ("interrupted", "holds epoch 2; continue with: flexunet train --config c.yaml --set "
                    "train.epochs=9 --resume"),
    ("running", "holds epoch 2; continue with"),  # a second Ctrl-C before history.json said so
    ("completed", "interrupted; RUN holds a finished run (2/2 epochs)"),
])
def test_ctrl_c_in_train_says_what_the_run_folder_holds(tmp_path, status, said):
    from flexunet_k3.cli.run_cmd import _after_ctrl_c
    from flexunet_k3.run_folder import RunFolder, TrainState

    run = RunFolder(tmp_path / "run")
    assert _after_ctrl_c(run, Path("c.yaml"), []) == "interrupted before training started"
    run.last.parent.mkdir(parents=True)
    run.last.write_bytes(b"a model")
    TrainState(epochs=2, epoch=2, status=status).save(run.history)
    assert said.replace("RUN", str(run.root)) in _after_ctrl_c(run, Path("c.yaml"),
                                                                ["train.epochs=9"])
