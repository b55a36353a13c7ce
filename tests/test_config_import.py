"""`flexunet config import` on bad input: one clear line, nothing half-written (no keras)."""

import os

import pytest
from conftest import assert_one_line_error, flexunet

from flexunet_k3.cli.config_cmd import import_command
from flexunet_k3.errors import UserError
from flexunet_k3.ini_import import import_ini

GOOD_INI = "[model]\nimage_width = 64\nimage_height = 64\nnum_layers = 4\n"


def test_import_of_a_folder_names_it(tmp_path):
    with pytest.raises(UserError, match="is a folder; give the INI file"):
        import_ini(tmp_path, tmp_path / "x.yaml")


@pytest.mark.parametrize(
    "line, message",
    [
        ("angles = 90", "[augmentor] angles: expected a list of numbers, got 90"),
        ("shears = 0.2", "[augmentor] shears: expected a list of numbers, got 0.2"),
        ('shears = ["a"]', "[augmentor] shears: expected a list of numbers, got ['a']"),
    ],
)
def test_augmentor_lists_that_are_not_lists_of_numbers(tmp_path, line, message):
    ini = tmp_path / "x.config"
    ini.write_text(f"[augmentor]\n{line}\n")
    with pytest.raises(UserError) as caught:
        import_ini(ini, tmp_path / "x.yaml")
    assert str(caught.value) == f"{ini}: {message}"


def test_overwrite_onto_a_folder_is_refused_up_front(tmp_path):
    ini = tmp_path / "x.config"
    ini.write_text(GOOD_INI)
    (tmp_path / "out").mkdir()
    done = flexunet("config", "import", str(ini), "-o", str(tmp_path / "out"), "--overwrite")
    assert_one_line_error(done, f"{tmp_path / 'out'}: is a folder")
    assert sorted(os.listdir(tmp_path)) == ["out", "x.config"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    ini = tmp_path / "x.config"
    ini.write_text(GOOD_INI)

    def fail(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        import_command(ini, tmp_path / "x.yaml", overwrite=False)
    assert os.listdir(tmp_path) == ["x.config"]
