"""Config loading, validation messages, overrides and schema, and the per-level schedule
derived from the model section (no keras)."""

from pathlib import Path

import pytest
import yaml

from flexunet_k3.config import Config, ModelConfig, load_config
from flexunet_k3.errors import UserError

REPO = Path(__file__).resolve().parents[1]
LUNG = REPO / "configs" / "lung.yaml"


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_lung_config_has_the_original_settings():
    cfg = load_config(LUNG)
    m, o, t = cfg.model, cfg.optimizer, cfg.train
    assert (m.image_height, m.image_width, m.image_channels, m.num_classes) == (512, 512, 3, 2)
    assert (m.base_filters, m.base_kernels, m.num_layers, m.dropout_rate) == (16, (9, 9), 8, 0.04)
    assert (o.name, o.learning_rate, o.clipvalue) == ("adam", 5e-5, 0.4)
    assert (t.batch_size, t.epochs, t.patience) == (2, 100, 10)
    assert (t.reducer.factor, t.reducer.patience) == (0.4, 4)


def test_defaults_for_everything_but_data_paths(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.model == ModelConfig()
    with pytest.raises(UserError, match="data.dataset"):
        cfg.data.split_dirs("train")


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  dataset: ../ds\n"))
    assert cfg.data.split_dirs("valid") == (
        (tmp_path.parent / "ds/valid/images").resolve(),
        (tmp_path.parent / "ds/valid/masks").resolve(),
    )


def test_relative_paths_given_with_set_resolve_against_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    path = write(tmp_path / "configs", "data:\n  dataset: ds\ntrain:\n  output_dir: runs/a\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path, ["train.output_dir=runs/b"])
    assert cfg.train.output_dir == tmp_path / "runs" / "b"
    assert cfg.data.dataset == tmp_path / "configs" / "ds"
    bare = write(tmp_path / "configs", "model: {num_layers: 3}\n", "bare.yaml")  # no train section
    created = load_config(bare, ["train.epochs=3"])  # --set creates it; its defaults stay put
    assert created.train.output_dir == load_config(bare).train.output_dir
    assert created.train.output_dir.parent == tmp_path / "configs" / "runs"
    whole = load_config(bare, ["train={output_dir: runs/c}"])
    assert whole.train.output_dir == tmp_path / "runs" / "c"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("model:\n  colour: 3\n", "model.colour: unknown key"),
        ("trian:\n  epochs: 3\n", "trian: unknown key"),
        ("train:\n  epochs: many\n", "train.epochs: Input should be a valid integer"),
        ("model:\n  base_kernels: [8, 8]\n", "model.base_kernels: kernel sizes must be odd"),
        ("model:\n  image_height: 100\n", "image_height 100 is not divisible by 2**(num_layers-1)"),
        (
            "model:\n  num_layers: 1\n",
            "model.num_layers: Input should be greater than or equal to 2",
        ),
        (
            "model:\n  num_classes: 0\n",
            "model.num_classes: Input should be greater than or equal to 1",
        ),
        ("model:\n  num_classes: 4\n", "data.classes: 2 classes listed but model.num_classes is 4"),
        (
            "optimizer:\n  name: rmsprop\n",
            "optimizer.name: Input should be 'adam', 'adamw' or 'sgd'",
        ),
        ("optimizer:\n  weight_decay: 0.01\n", "weight_decay applies only to adamw, not adam"),
        ("optimizer:\n  name: adamw\n  momentum: 0.9\n", "momentum applies only to sgd"),
        ("- a\n- b\n", "expected a mapping of sections"),
        ("model: [\n", "not valid YAML (line 2)"),
        ("train:\n  epochs: 3\ntrain:\n  seed: 1\n", "(line 3): duplicate key 'train'"),
        ("train: {epochs: 010}\n", "'010' is an octal or base-60 number in YAML 1.1; write it"),
        ("train: {epochs: 1:30}\n", "'1:30' is an octal or base-60 number"),
        ("a: 1\n---\nb: 2\n", "expected a single document in the stream but found another"),
        ("model:\n  name: [a\n", "while parsing a flow sequence: expected ',' or ']'"),
        ("train:\0\n", "character #x0000 at position 6: special characters are not allowed"),
        ("train: !!python/object/apply:os.getcwd []\n", "could not determine a constructor"),
    ],
)
def test_bad_configs_name_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message
    assert "\n" not in message


def test_merge_keys_merge_and_give_way_to_the_mappings_own(tmp_path):
    path = write(tmp_path, "train:\n  <<: {epochs: 3, batch_size: 2}\n  epochs: 4\n")
    cfg = load_config(path)
    assert (cfg.train.epochs, cfg.train.batch_size) == (4, 2)
    assert load_config(write(tmp_path, "train: {epochs: 0x10}\n")).train.epochs == 16


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found; give the YAML config file"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    path = write(tmp_path, "")
    cfg = load_config(
        path, ["train.epochs=3", "model.base_kernels=[5, 3]", "train.reducer.factor=0.5"]
    )
    assert (cfg.train.epochs, cfg.model.base_kernels, cfg.train.reducer.factor) == (3, (5, 3), 0.5)
    with pytest.raises(UserError, match="--set train.nope: unknown key"):
        load_config(path, ["train.nope=1"])
    with pytest.raises(UserError, match="--set train.reducer.factor: Input should be less than 1"):
        load_config(path, ["train.reducer.factor=2"])
    with pytest.raises(UserError, match="expected section.key=value"):
        load_config(path, ["train.epochs"])
    # YAML reads a bare on/off as a boolean; train.jit takes it as the word.
    assert load_config(path, ["train.jit=off"]).train.jit == "off"
    assert load_config(write(tmp_path, "train: {jit: on}")).train.jit == "on"


def test_resolved_yaml_round_trips(tmp_path):
    cfg = load_config(LUNG)
    again = Config.model_validate(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_schema_lists_sections():
    schema = Config.model_json_schema()
    assert {"model", "optimizer", "data", "augment", "train", "infer"} <= set(schema["properties"])



def test_schema_takes_the_short_forms_a_config_may_use():
    model = Config.model_json_schema()["$defs"]["ModelConfig"]["properties"]
    train = Config.model_json_schema()["$defs"]["TrainConfig"]["properties"]
    for key in ("base_kernels", "dilation"):  # `base_kernels: 9` is (9, 9)
        assert [kind["type"] for kind in model[key]["anyOf"]] == ["integer", "array"]
    assert {"type": "boolean"} in train["jit"]["anyOf"]  # `jit: on` in YAML 1.1
    assert ModelConfig(base_kernels=7, dilation=2).base_kernels == (7, 7)


def test_lung_model_has_the_originals_parameter_count():
    """Counted without building it (test_model checks weight_count against keras); `flexunet
    summary` of the built model prints it too (test_cli_backend)."""
    assert load_config(LUNG).model.weight_count() == 124_996_866

def test_schedules_shrink_to_floor():
    levels = ModelConfig(base_kernels=9, dilation=3, dropout_rate=0.1).levels()
    assert [lv["kernel_size"][0] for lv in levels] == [9, 7, 5, 3, 3, 3, 3, 3]
    assert [lv["dilation_rate"][0] for lv in levels] == [3, 2, 1, 1, 1, 1, 1, 1]
    assert [lv["filters"] for lv in levels][:3] == [16, 32, 64]
    assert levels[2]["dropout"] == pytest.approx(0.2)


def test_unknown_architecture_and_activation_are_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  name: resnet\n  activation: bogus\n")
    with pytest.raises(UserError, match="model.name: unknown architecture 'resnet'; known: "
                       "flexunet; model.activation: Input should be 'relu'"):
        load_config(path)
