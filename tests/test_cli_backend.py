"""The commands that load the backend without training: `info`, `summary`."""

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import assert_one_line_error, flexunet

from flexunet_k3.precision import resolve_precision, this_machine

REPO = Path(__file__).resolve().parents[1]


def test_info_names_the_backend_in_use():
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    done = flexunet("info")
    assert done.returncode == 0, done.stderr
    assert re.search(rf"backend in use\s+.*{backend}", done.stdout)
    assert "devices" in done.stdout and "keras" in done.stdout
    precision, why = resolve_precision("auto", this_machine())
    assert re.search(rf"precision auto\s+.*{precision} \({why}\)", done.stdout), done.stdout
    if backend == "jax":  # the tests' own cache (conftest.py)
        cache = os.environ["JAX_COMPILATION_CACHE_DIR"]
        assert re.search(rf"JAX compile cache\s+.*{re.escape(cache)}", done.stdout), done.stdout
    else:
        assert "JAX compile cache" not in done.stdout


def test_summary_prints_the_originals_parameter_count():
    done = flexunet("summary", "--config", str(REPO / "configs" / "lung.yaml"))
    assert done.returncode == 0, done.stderr
    assert "Total params: 124,996,866" in done.stdout


@pytest.mark.skipif(
    not os.environ.get("FLEXUNET_ORIGINAL_CONFIG"),
    reason="FLEXUNET_ORIGINAL_CONFIG (the original's lung INI) is not set",
)
def test_config_import_of_the_original_builds_the_lung_model(tmp_path):
    out = tmp_path / "lung.yaml"
    done = flexunet("config", "import", os.environ["FLEXUNET_ORIGINAL_CONFIG"], "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "model.model" in done.stderr  # unmapped keys are listed
    assert flexunet("config", "validate", str(out)).returncode == 0
    assert "Total params: 124,996,866" in flexunet("summary", "-c", str(out)).stdout
    again = flexunet("config", "import", os.environ["FLEXUNET_ORIGINAL_CONFIG"], "-o", str(out))
    assert_one_line_error(again, "already exists")


@pytest.mark.parity
def test_a_second_jax_command_reuses_what_the_first_compiled(tmp_path, tiny_config):
    """JAX's compilations (here the model's initializers) are kept in the user's cache folder
    and found again by the next command: it compiles nothing new."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("JAX_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")

    def summary_and_cache() -> set[str]:
        done = subprocess.run(["flexunet", "--backend", "jax", "summary", "--config",
                               str(tiny_config)], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        [folder] = (tmp_path / "cache" / "flexunet-k3").iterdir()
        return {path.name for path in folder.iterdir()}

    first = summary_and_cache()
    assert any("truncated_normal" in name for name in first)
    assert summary_and_cache() == first


@pytest.mark.parity
@pytest.mark.parametrize("variable, value, fragment", [
    ("JAX_ENABLE_COMPILATION_CACHE", "maybe", "invalid truth value 'maybe'"),
    ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "abc", 'Invalid value "abc"'),
])
def test_a_jax_variable_jax_cannot_read_is_one_line(tmp_path, variable, value, fragment):
    env = {**os.environ, variable: value, "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run(["flexunet", "--backend", "jax", "info"], capture_output=True,
                          text=True, env=env)
    assert_one_line_error(done, fragment, "fix or unset that variable")
