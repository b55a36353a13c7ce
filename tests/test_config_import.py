"""`flexunet config import`: the original's INI mapped to a config; bad input (no keras)."""

import os
from pathlib import Path

import pytest
from conftest import assert_one_line_error, flexunet, no_hang

from flexunet_k3.cli.config_cmd import import_command
from flexunet_k3.config import Config, load_config, validate
from flexunet_k3.errors import UserError
from flexunet_k3.ini_import import import_ini

REPO = Path(__file__).resolve().parents[1]
GOOD_INI = "[model]\nimage_width = 64\nimage_height = 64\nnum_layers = 4\n"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_an_ini_saved_by_a_windows_editor_imports(tmp_path, encoding):
    """Notepad's UTF-8 with a byte-order mark, PowerShell's `>` (UTF-16), UTF-32 with one."""
    (tmp_path / "a.config").write_bytes(GOOD_INI.encode(encoding))
    result, _ = import_ini(tmp_path / "a.config", tmp_path / "a.yaml")
    assert result["model"]["image_width"] == 64


def test_import_of_a_folder_names_it(tmp_path):
    with pytest.raises(UserError, match="is a folder; give the INI file"):
        import_ini(tmp_path, tmp_path / "x.yaml")


GAP, FLOAT, BOOL, SHARED = ("{(0,0,0):0, (9,9,9):2, (8,8,8):3}", "{(0,0,0):0, (9,9,9):1.5}",
                            "{(0,0,0):0, (9,9,9):True}", "{(0,0,0):0, (1,1,1):0, (9,9,9):1}")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[augmentor]\nangles = 90", "[augmentor] angles: expected a list of numbers, got 90"),
        ("[augmentor]\nshears = 0.2", "[augmentor] shears: expected a list of numbers, got 0.2"),
        ('[augmentor]\nshears = ["a"]',
         "[augmentor] shears: expected a list of numbers, got ['a']"),
        (f"[mask]\nrgb_map = {GAP}", f"[mask] rgb_map = {GAP}: class ids [0, 2, 3] must be 0..2, "
         "each once"),
        (f"[mask]\nrgb_map = {FLOAT}", f"[mask] rgb_map = {FLOAT}: class ids [0, 1.5] must be "
         "whole numbers"),
        (f"[mask]\nrgb_map = {BOOL}", f"[mask] rgb_map = {BOOL}: class ids [0, True] must be "
         "whole numbers"),
        (f"[mask]\nrgb_map = {SHARED}", f"[mask] rgb_map = {SHARED}: class 0 has 2 colors; "
         "flexunet-k3 takes one color per class (data.classes): keep one, and recolor the "
         "masks that use the others"),
        ("[mask]\nrgb_map = {0:0, 1:1}", "[mask] rgb_map = {0:0, 1:1}: colors [0, 1] must be "
         "(r, g, b) triples"),
        ("[train]\nimages_dir = None", "[train] images_dir = None: expected a path, got None"),
        ("[train]\nimages_dir =", "[train] images_dir = : expected a path, got ''"),
    ],
)
def test_ini_values_of_the_wrong_kind_are_refused_naming_the_key(tmp_path, text, message):
    ini = tmp_path / "x.config"
    ini.write_text(f"{text}\n")
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

    def fail(temporary, _):
        raise OSError(28, "No space left on device", str(temporary))

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left") as caught:
        import_command(ini, tmp_path / "x.yaml", overwrite=False)
    assert os.listdir(tmp_path) == ["x.config"]
    assert caught.value.filename == str(tmp_path / "x.yaml")  # not the temporary file's name


OTHER_PROJECT_INI = """\
; a 4-class project of the original tool, with augmentation
[model]
model          = "TensorFlowFlexUNet"
generator      = True
image_width    = 256
image_height   = 256
image_channels = 3
input_normalize = True
normalization  = True
num_classes    = 4
base_filters   = 32
base_kernels   = (7,7)
num_layers     = 6
dropout_rate   = 0.05
dilation       = (2,2)
optimizer      = "AdamW"
learning_rate  = 0.0001
clipnorm       = 1.0
loss           = "categorical_crossentropy"

[train]
epochs        = 50
batch_size    = 4
images_dir    = "./dataset/train/images/"
masks_dir     = "./dataset/train/masks/"
steps_per_epoch = 200

[augmentor]
vflip    = True
hflip    = True
rotation = True
angles   = [90, 180, 270]
shrinks  = [0.8]
shears   = [0.1, -0.1]
distortion = True

[mask]
rgb_map = {(0,0,0):0, (255,0,0):1, (0,255,0):2, (0,0,255):3}
"""


def test_import_of_another_project_maps_values_and_lists_the_rest(tmp_path):
    ini = tmp_path / "train_eval_infer.config"
    ini.write_text(OTHER_PROJECT_INI)
    data, unmapped = import_ini(ini, tmp_path / "out" / "run.yaml")
    cfg = Config.model_validate(data)
    assert (cfg.model.num_classes, cfg.model.base_kernels, cfg.model.dilation) == (
        4,
        (7, 7),
        (2, 2),
    )
    assert cfg.model.input_normalize and cfg.model.normalization and cfg.augment.enabled
    assert (cfg.optimizer.name, cfg.optimizer.clipnorm) == ("adamw", 1.0)
    assert cfg.augment.rotation_angles == [90.0, 180.0, 270.0] and cfg.augment.shear == 0.1
    assert [c.color for c in cfg.data.classes][1] == (255, 0, 0)
    assert data["data"]["train_images"] == "../dataset/train/images"
    keys = dict(unmapped)
    assert {"model.model", "train.steps_per_epoch", "augmentor.distortion"} <= set(keys)


def test_import_refuses_non_ini(tmp_path):
    with pytest.raises(UserError, match="not an INI config"):
        (tmp_path / "x.config").write_text("just text\n")
        import_ini(tmp_path / "x.config", tmp_path / "x.yaml")


@pytest.mark.skipif(
    not os.environ.get("FLEXUNET_ORIGINAL_CONFIG"),
    reason="FLEXUNET_ORIGINAL_CONFIG (the original's lung INI) is not set",
)
def test_import_of_the_original_lung_config(tmp_path):
    data, _ = import_ini(Path(os.environ["FLEXUNET_ORIGINAL_CONFIG"]), tmp_path / "lung.yaml")
    assert Config.model_validate(data).model == load_config(REPO / "configs" / "lung.yaml").model


@pytest.mark.parametrize("how", ["same path", "symbolic link", "hard link", "default output"])
def test_import_never_replaces_the_ini_it_reads(tmp_path, how):
    ini = tmp_path / ("x.yaml" if how == "default output" else "x.config")
    ini.write_text(GOOD_INI)
    output = {"same path": ini, "default output": None}.get(how, tmp_path / "out.yaml")
    if how == "symbolic link":
        output.symlink_to(ini)
    if how == "hard link":
        os.link(ini, output)
    args = ["-o", str(output)] if output else []
    done = flexunet("config", "import", str(ini), *args, "--overwrite")
    assert_one_line_error(done, "is the INI to import; give another --output")
    assert ini.read_text() == GOOD_INI and (output is None or output.read_text() == GOOD_INI)


@pytest.mark.parametrize(
    "literal",
    ["-" * 100_000 + "1", "(" * 200 + ")" * 200, "[" * 100_000, "9" * 5000, '"' + "a" * 500_000],
)
def test_pathological_literals_are_text_not_a_crash(tmp_path, literal):
    ini = tmp_path / "x.config"
    ini.write_text(f"[train]\nnotes = {literal}\nsteps_per_epoch = {literal}\n")
    data, unmapped = import_ini(ini, tmp_path / "x.yaml")
    assert data == {} and [key for key, _ in unmapped] == ["train.notes", "train.steps_per_epoch"]
    ini.write_text(f"[model]\nimage_width = {literal}\nbase_kernels = {{7, 9}}\n")
    data, _ = import_ini(ini, tmp_path / "x.yaml")
    with pytest.raises(UserError, match="image_width.*; model.base_kernels"):  # a set: no order
        validate(data, str(ini))


def test_a_special_or_huge_ini_is_refused_before_reading(tmp_path):
    fifo = tmp_path / "fifo.config"
    os.mkfifo(fifo)
    with no_hang(), pytest.raises(UserError, match="fifo.config: is a special file"):
        import_ini(fifo, tmp_path / "x.yaml")  # opening it would wait for a writer for ever
    huge = tmp_path / "huge.config"
    huge.write_text(GOOD_INI + "; padding\n" * 200_000)
    with pytest.raises(UserError, match=r"huge\.config: \d+ bytes, more than the 1048576"):
        import_ini(huge, tmp_path / "x.yaml")


def test_one_unmapped_key_is_singular(tmp_path):
    ini = tmp_path / "x.config"
    ini.write_text(GOOD_INI.replace("[model]\n", "[model]\nshow_summary = False\n"))
    done = flexunet("config", "import", str(ini))
    assert done.returncode == 0, done.stderr
    assert "1 key not mapped" in done.stderr and "1 keys" not in done.stderr


def test_names_and_keys_are_written_as_they_are(tmp_path):
    """A "[" in a path or key is text, not rich markup; a line break in the INI's name cannot
    add YAML to the header comment."""
    folder = tmp_path / "exp[v2]"
    folder.mkdir()
    ini, output = folder / "nl\ntrain: {epochs: 7}\n#x.config", folder / "out.yaml"
    ini.write_text(GOOD_INI.replace("[model]\n", "[model]\na[/b] = 1\n"))
    done = flexunet("config", "import", str(ini), "-o", str(output))
    assert done.returncode == 0, done.stderr
    assert f"wrote {output}" in done.stdout and "a[/b]" in done.stderr
    assert load_config(output).train.epochs == Config().train.epochs
    assert flexunet("config", "validate", str(output)).stdout.startswith(f"{output}: valid")

