"""Config ranges, `--set` messages and odd YAML: one UserError line, never a traceback."""

import os

import pytest
import yaml
from conftest import assert_one_line_error, flexunet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexunet_k3.config import Config, load_config, parse_override
from flexunet_k3.errors import UserError

PROPERTY = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def write(folder, data, name="run.yaml"):
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def refused(path, overrides=()) -> str:
    """The one-line message load_config refuses the config with."""
    with pytest.raises(UserError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("train: {epochs: true}", "train.epochs: Input should be a valid integer"),
        ("train: {devices: 0}", "train.devices: expected all or a device count from 1 to"),
        ("train: {devices: two}", "train.devices: expected all or a device count"),
        ("train: {distribution: ddp}", "train.distribution: Input should be 'none' or"),
        ("train: {coordinator_timeout: 0}", "train.coordinator_timeout: Input should be greater"),
        ("train: {epochs: 2.5}", "train.epochs: Input should be a valid integer"),
        ("train: {epochs: 100001}", "train.epochs: Input should be less than or equal to 100000"),
        ("train: {batch_size: 5000}", "train.batch_size: Input should be less than or equal"),
        ("infer: {batch_size: 0}", "infer.batch_size: Input should be greater than or equal to 1"),
        ("train: {seed: -1}", "train.seed: Input should be greater than or equal to 0"),
        ("train: {steps_per_epoch: 0}", "train.steps_per_epoch: Input should be greater"),
        ("train: {num_infer_images: 100000}", "train.num_infer_images: Input should be less"),
        ("train: {reducer: {patience: false}}", "train.reducer.patience: Input should be a valid"),
        ("data: {workers: 1000}", "data.workers: Input should be less than or equal to 64"),
        ("model: {image_height: 16384}", "model.image_height: Input should be less than or equal"),
        ("model: {image_channels: true}", "model.image_channels: expected a number, got true"),
        ("model: {num_classes: 256}", "model.num_classes: Input should be less than or equal"),
        ("model: {base_filters: 2048}", "model.base_filters: Input should be less than or equal"),
        ("model: {num_layers: 13}", "model.num_layers: Input should be less than or equal to 12"),
        ("model: {base_kernels: [9, true]}", "model.base_kernels.1: Input should be a valid"),
        ("model: {base_kernels: 65}", "model.base_kernels.0: Input should be less than or equal"),
        ("model: {dilation: 0}", "model.dilation.0: Input should be greater than or equal to 1"),
        (
            "model: {base_filters: 1024, num_layers: 5}",
            "model: base_filters * 2**(num_layers-1) = 16384 filters at the deepest level",
        ),
        (
            "model: {base_filters: 1024, num_layers: 4, base_kernels: 63, image_height: 64, "
            "image_width: 64}",
            "model: 676,928,872,450 weights (2,522 GiB in float32), more than the 4,294,967,296",
        ),
        ("model: {dropout_rate: .nan}", "model.dropout_rate: Input should be a finite number"),
        ("optimizer: {learning_rate: .inf}", "optimizer.learning_rate: Input should be a finite"),
        ("optimizer: {learning_rate: true}", "optimizer.learning_rate: expected a number"),
        ("optimizer: {name: sgd, momentum: 1.0}", "optimizer.momentum: Input should be less"),
        ("augment: {rotation_angles: [10, .inf]}", "augment.rotation_angles.1: Input should be a"),
        ("augment: {elastic_sigma: 1.0e+9}", "augment.elastic_sigma: Input should be less than"),
        ("data: {dataset: \"a\\0b\"}", "data.dataset: a path cannot hold a NUL character"),
        ("data: {dataset: \"a\\ud800\"}", "data.dataset: a path cannot hold '\\ud800'"),
        (
            "data: {classes: [{name: a, color: [0, 0, 0]}, {name: b, color: [0, 0, 0]}]}",
            "data.classes: classes 0 and 1 share the color (0, 0, 0); give each class its own",
        ),
        (
            "data: {classes: [{name: a, color: [0, 0, 0]}, {name: a, color: [9, 9, 9]}]}",
            "data.classes: classes 0 and 1 share the name 'a'",
        ),
        ("data: {classes: [{name: a, color: [256, 0, 0]}, {name: b, color: [1, 1, 1]}]}",
         "data.classes.0.color.0: Input should be less than or equal to 255"),
        ("data: {classes: [{name: a, color: [0, 0, 0]}]}", "data.classes: 1 class listed but"),
        ("train: {output_dir: ''}", "train.output_dir: an empty path; give a name"),
        ("data: {dataset: ' '}", "data.dataset: an empty path"),
        ("train: {output_dir: 2024-01-01}", "YAML reads 2024-01-01 as a date; quote it as a path"),
        ("model: 3", "model: expected a section (key: value pairs), got 3"),
        ("train: {lr_schedule: cosine}", "train: lr_schedule cosine sets every epoch's rate: "
         "set reducer.enabled to false"),
        ("train: {lr_schedule: linear}", "train.lr_schedule: Input should be 'constant' or"),
    ],
)
def test_numbers_out_of_range_or_of_the_wrong_kind_are_refused(tmp_path, text, expected):
    path = write(tmp_path, text)
    message = refused(path)
    assert message.startswith(f"{path}: ") and expected in message


def test_the_lung_settings_and_the_largest_values_pass(tmp_path):
    largest = {
        "model": {"image_height": 8192, "image_width": 8192, "num_layers": 12, "base_filters": 4,
                  "num_classes": 255},
        "data": {"classes": [{"name": str(i), "color": [i, i, i]} for i in range(255)]},
        "train": {"epochs": 100_000, "batch_size": 4096, "seed": 2**32 - 1},
    }
    cfg = load_config(write(tmp_path, largest))
    assert (cfg.model.image_height, cfg.model.num_classes, cfg.train.seed) == (8192, 255, 2**32 - 1)
    assert load_config(write(tmp_path, "optimizer: {learning_rate: 1e-4}")).optimizer.learning_rate


def test_several_devices_without_data_parallel_are_named(recwarn):
    from flexunet_k3.distribution import start

    start(Config.model_validate({"train": {"devices": 1}}), "jax", "flexunet train")
    start(Config(), "jax", "flexunet train")
    assert not recwarn.list
    with pytest.warns(UserWarning, match="train.devices is 4 but train.distribution is none: "
                      "flexunet infer runs on one device; set train.distribution: data_parallel"):
        start(Config.model_validate({"train": {"devices": 4}}), "torch", "flexunet infer")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("nosuch.key=1", "--set nosuch: unknown key"),  # a section the override created
        ("train.epochs=true", "--set train.epochs: Input should be a valid integer"),
        ("train.epochs=0x_", "--set train.epochs: Input should be a valid integer"),  # odd YAML
        ("train.epochs=[[[", "--set train.epochs: Input should be a valid integer"),
        ("model.num_layers.x=1", "--set model.num_layers: Input should be a valid integer"),
    ],
)
def test_errors_in_set_values_name_set_not_the_file(tmp_path, override, expected):
    path = write(tmp_path, "train: {epochs: 3}\n")
    message = refused(path, [override])
    assert message.startswith(expected) and str(path) not in message


def test_a_check_over_keys_from_both_names_the_file_and_the_set_key(tmp_path):
    path = write(tmp_path, "model: {num_layers: 4}\n")
    message = refused(path, ["model.image_height=100"])
    assert message.startswith(f"{path}: model (with --set model.image_height): image_height 100")
    message = refused(path, ["model.num_classes=3"])  # a check across sections
    assert message.startswith(f"{path}: data.classes (with --set model.num_classes): 2 classes")
    message = refused(path, ["model.num_classes=3", "model.num_layers=4"])
    assert "(with --set model.num_classes):" in message  # model.num_layers is not named


def test_set_keys_with_empty_parts_are_refused_and_empty_sections_filled(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="the key has an empty part"):
        parse_override("model..image_height=64")
    path = write(tmp_path, "data:\ntrain: {epochs: 3}\n")  # `data:` is an empty (null) section
    monkeypatch.chdir(tmp_path)
    assert load_config(path, ["data.dataset=ds"]).data.dataset == tmp_path.resolve() / "ds"


def test_set_paths_start_from_here_and_the_files_defaults_from_its_folder(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    path = write(tmp_path / "sub", "train: {epochs: 3}\n")
    monkeypatch.chdir(tmp_path)
    here, there = tmp_path.resolve(), (tmp_path / "sub").resolve()
    whole = load_config(path, ["train={epochs: 4}"]).train  # a section replaced: its default
    assert (whole.epochs, whole.output_dir) == (4, there / "runs" / "flexunet")
    assert load_config(path, ["train={output_dir: x}"]).train.output_dir == here / "x"
    assert load_config(path, ["train.output_dir=run #2"]).train.output_dir == here / "run #2"
    assert load_config(path, ['train.output_dir="a #1" # note']).train.output_dir == here / "a #1"
    assert load_config(path, ["train.epochs=5 # five"]).train.epochs == 5


@pytest.mark.parametrize(
    "content, expected",
    [
        ("train: {epochs: 2020-13-45}\n", "cannot construct a value (month must be in 1..12)"),
        ("a: !!int x\n", "cannot construct a value (invalid literal for int()"),
        ("a: " + "[" * 3000 + "]" * 3000 + "\n", "not valid YAML: nested too deeply"),
        (b"train: {epochs: \xff}\n", "not UTF-8 text (invalid start byte at byte 16); save it as"),
        ("#" * (1 << 20) + "\n", "more than the 1048576 such a file may have; give the YAML"),
    ],
)
def test_odd_yaml_files_get_one_line(tmp_path, content, expected):
    path = tmp_path / "run.yaml"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    message = refused(path)
    assert message.startswith(f"{path}: ") and expected in message


def test_a_folder_or_a_pipe_given_as_the_config_says_so(tmp_path):
    assert "is a folder; give the YAML config file" in refused(tmp_path)
    os.mkfifo(tmp_path / "pipe")
    assert "is a special file (device, pipe or socket)" in refused(tmp_path / "pipe")


def test_the_command_line_names_set_folders_and_option_ranges(tmp_path):
    path = write(tmp_path, "model: {num_classes: 1}\n")
    done = flexunet("config", "validate", str(path))
    assert done.returncode == 0 and "1 class," in done.stdout, done.stderr
    done = flexunet("config", "validate", str(path), "--set", "nosuch.key=1")
    assert_one_line_error(done, "error: --set nosuch: unknown key")
    assert_one_line_error(flexunet("summary", "--config", str(tmp_path)), "is a folder")
    for option, value in (("--batch-size", "5000"), ("--steps", "0"), ("--timeout", "inf")):
        done = flexunet("benchmark", "--config", str(path), option, value)
        assert_one_line_error(done, f"'{option}'")


# ---- properties: whatever the input, a Config or one UserError line ----------------------------

FIELDS = sorted({name for section in Config.model_fields.values()
                 for name in section.annotation.model_fields} | {"factor", "patience", "name"})
SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
    | st.text(max_size=12) | st.sampled_from(["on", "off", "5e-5", "adamw", "../x", "2020-01-01"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(FIELDS + ["name", "color"]) | st.text(max_size=5), inner, max_size=4
    ),
    max_leaves=12,
)
SECTIONS = st.dictionaries(
    st.sampled_from([*Config.model_fields, "extra"]),
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), VALUES, max_size=5)
    | SCALARS,
    max_size=6,
)


def loads_or_refuses(path, overrides=()):
    try:
        assert isinstance(load_config(path, list(overrides)), Config)
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc)


@PROPERTY
@given(data=SECTIONS)
def test_any_yaml_mapping_loads_or_is_refused_in_one_line(tmp_path, data):
    loads_or_refuses(write(tmp_path, data))


YAML_BITS = st.sampled_from([
    "train:", "model:", "data:", " epochs:", " seed:", " dataset:", " classes:", "\n", "  ", "- ",
    ": ", "[", "]", "{", "}", ",", "&a ", "*a", "!!int ", "!!float ", "!!binary ", "!!set ",
    "!!python/name:os.system", "2020-13-45", "0x_", "1e999", ".nan", "~", "true", "'", '"',
    "\\0", "\x00", "\t", "#", "---", "...", "? ", "|", ">",
])


@PROPERTY
@given(text=st.text(max_size=100) | st.lists(YAML_BITS, max_size=30).map("".join))
def test_any_text_as_a_config_loads_or_is_refused_in_one_line(tmp_path, text):
    loads_or_refuses(write(tmp_path, text))


@PROPERTY
@given(
    key=st.sampled_from([f"{s}.{f}" for s in Config.model_fields for f in FIELDS]) | st.text(),
    value=st.text() | st.lists(YAML_BITS, max_size=10).map("".join)
    | SCALARS.map(lambda v: yaml.safe_dump(v).removesuffix("\n...\n")),
    equals=st.sampled_from(["=", "", "=="]),
)
def test_any_set_value_loads_or_is_refused_in_one_line(tmp_path, key, value, equals):
    loads_or_refuses(write(tmp_path, "data: {dataset: ds}\n"), [f"{key}{equals}{value}"])
