"""``kdzoo.config.load_config``: YAML files + ``--set`` overrides -> typed dataclasses, one-line errors."""

from __future__ import annotations

import pytest

from kdzoo.config import (
    DataConfig,
    OptimConfig,
    RunConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
    config_from_dict,
    load_config,
)
from kdzoo.errors import KdzooError
from kdzoo_plugins.fitnets import FitNetsConfig
from kdzoo_plugins.kd import KDConfig

CLASSES = {"kd": KDConfig, "fitnets": FitNetsConfig}


def load(files=(), overrides=(), methods=("kd",)):
    return load_config(list(files), list(overrides), list(methods), CLASSES)


def load_error(files=(), overrides=(), methods=("kd",)) -> str:
    with pytest.raises(KdzooError) as info:
        load(files, overrides, methods)
    message = str(info.value)
    assert "\n" not in message, f"error message spans several lines: {message!r}"
    assert message.strip()
    return message


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- defaults and merging


def test_defaults():
    cfg = load()
    assert isinstance(cfg, RunConfig)
    assert cfg.methods == ["kd"]
    assert cfg.teacher == TeacherConfig()
    assert cfg.student == StudentConfig()
    assert cfg.data == DataConfig()
    assert cfg.optim == OptimConfig()
    assert cfg.train == TrainConfig()
    assert cfg.teacher.model == "resnet18" and cfg.teacher.train.epochs == 8
    assert cfg.student.model == "mobilenetv3_small_050"
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.05
    assert cfg.train.epochs == 12
    assert cfg.method_configs == {"kd": KDConfig()}
    assert cfg.method_configs["kd"].temperature == 4.0


def test_both_methods_get_default_configs():
    cfg = load(methods=("kd", "fitnets"))
    assert cfg.methods == ["kd", "fitnets"]
    assert cfg.method_configs == {"kd": KDConfig(), "fitnets": FitNetsConfig()}


def test_yaml_file_merge(tmp_path):
    base = write(
        tmp_path,
        "base.yaml",
        "methods: [fitnets]\n"
        "teacher: {model: resnet10t, train: {epochs: 2}}\n"
        "optim: {lr: 0.2, milestones: [5, 8]}\n"
        "train: {epochs: 10}\n"
        "fitnets: {hint_weight: 50.0}\n",
    )
    extra = write(
        tmp_path,
        "extra.yaml",
        "optim: {name: adamw}\ntrain: {seed: 7}\nfitnets: {schedule: two_stage}\n",
    )
    cfg = load([base, extra], methods=())
    assert cfg.methods == ["fitnets"]
    assert cfg.teacher.model == "resnet10t" and cfg.teacher.train.epochs == 2
    # Deep merge: the second file adds keys in a section without dropping the first file's.
    assert cfg.optim.name == "adamw"
    assert cfg.optim.lr == 0.2 and cfg.optim.milestones == [5, 8]
    assert cfg.train.epochs == 10 and cfg.train.seed == 7
    assert cfg.method_configs["fitnets"].hint_weight == 50.0
    assert cfg.method_configs["fitnets"].schedule == "two_stage"
    assert cfg.student == StudentConfig()


def test_later_file_wins_and_overrides_win_over_files(tmp_path):
    a = write(tmp_path, "a.yaml", "train: {epochs: 4}\n")
    b = write(tmp_path, "b.yaml", "train: {epochs: 6}\n")
    assert load([a, b]).train.epochs == 6
    assert load([b, a]).train.epochs == 4
    assert load([a, b], ["train.epochs=9"]).train.epochs == 9


def test_command_line_method_wins_over_file(tmp_path):
    path = write(tmp_path, "m.yaml", "methods: [fitnets]\n")
    assert load([path], methods=("kd",)).methods == ["kd"]


def test_empty_yaml_file_is_defaults(tmp_path):
    path = write(tmp_path, "empty.yaml", "")
    assert load([path]).train == TrainConfig()


# --------------------------------------------------------------------------- --set overrides


def test_set_float():
    cfg = load(overrides=["optim.lr=0.1"])
    assert cfg.optim.lr == 0.1
    assert type(cfg.optim.lr) is float


def test_set_int_literal_becomes_float_for_float_field():
    cfg = load(overrides=["optim.lr=1"])
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float


def test_set_int():
    cfg = load(overrides=["train.epochs=3"])
    assert cfg.train.epochs == 3
    assert type(cfg.train.epochs) is int


def test_set_bool_list_and_none():
    cfg = load(overrides=["data.augment=false", "optim.milestones=[3, 6]", "data.train_limit=null"])
    assert cfg.data.augment is False
    assert cfg.optim.milestones == [3, 6]
    assert cfg.data.train_limit is None


def test_bare_key_routed_to_selected_method():
    cfg = load(overrides=["schedule=two_stage"], methods=("fitnets",))
    assert cfg.method_configs["fitnets"].schedule == "two_stage"
    # Only-in-fitnets field also routes when kd is selected alongside.
    cfg = load(overrides=["schedule=two_stage"], methods=("kd", "fitnets"))
    assert cfg.method_configs["fitnets"].schedule == "two_stage"
    assert cfg.method_configs["kd"] == KDConfig()


def test_bare_key_routed_to_kd():
    cfg = load(overrides=["temperature=2"], methods=("kd",))
    assert cfg.method_configs["kd"].temperature == 2.0


def test_qualified_method_key():
    cfg = load(overrides=["kd.temperature=3", "fitnets.temperature=5"], methods=("kd", "fitnets"))
    assert cfg.method_configs["kd"].temperature == 3.0
    assert cfg.method_configs["fitnets"].temperature == 5.0


def test_ambiguous_bare_key():
    message = load_error(overrides=["temperature=2"], methods=("kd", "fitnets"))
    assert "ambiguous" in message
    assert "temperature" in message
    assert "kd" in message and "fitnets" in message


def test_unknown_dotted_key_suggests_close_match():
    message = load_error(overrides=["optim.lrr=0.1"])
    assert "optim.lrr" in message
    assert "did you mean 'lr'" in message


def test_unknown_bare_key():
    message = load_error(overrides=["epochz=3"])
    assert "epochz" in message


def test_unknown_top_level_section_in_file(tmp_path):
    path = write(tmp_path, "bad.yaml", "optimm: {lr: 0.1}\n")
    message = load_error([path])
    assert "optimm" in message
    assert "did you mean 'optim'" in message


def test_unknown_key_in_method_section(tmp_path):
    path = write(tmp_path, "bad.yaml", "fitnets: {hint_weigth: 3}\n")
    message = load_error([path], methods=("fitnets",))
    assert "fitnets.hint_weigth" in message
    assert "hint_weight" in message


def test_wrong_type_names_key():
    message = load_error(overrides=["train.epochs=abc"])
    assert "train.epochs" in message
    assert "abc" in message


def test_float_for_int_field_rejected():
    message = load_error(overrides=["train.epochs=2.5"])
    assert "train.epochs" in message


def test_bool_for_int_field_rejected():
    message = load_error(overrides=["train.epochs=true"])
    assert "train.epochs" in message


def test_negative_epochs_rejected():
    message = load_error(overrides=["train.epochs=-1"])
    assert "train.epochs" in message
    assert "-1" in message


def test_zero_epochs_rejected_but_a_teacher_used_as_is_allowed():
    assert ">= 1" in load_error(overrides=["train.epochs=0"])
    assert load(overrides=["teacher.train.epochs=0"]).teacher.train.epochs == 0


def test_nonpositive_lr_rejected():
    assert "optim.lr" in load_error(overrides=["optim.lr=0"])


def test_invalid_literal():
    message = load_error(overrides=["fitnets.schedule=three"], methods=("fitnets",))
    assert "fitnets.schedule" in message
    assert "three" in message
    assert "joint" in message and "two_stage" in message


def test_invalid_literal_bare_key():
    message = load_error(overrides=["schedule=three"], methods=("fitnets",))
    assert "fitnets.schedule" in message


def test_malformed_set():
    message = load_error(overrides=["optim.lr"])
    assert "KEY=VALUE" in message
    assert "optim.lr" in message


# --------------------------------------------------------------------------- methods


def test_unknown_method_lists_known_and_suggests():
    message = load_error(methods=("fitnet",))
    assert "fitnet" in message
    assert "did you mean 'fitnets'" in message
    assert "kd" in message and "fitnets" in message


def test_no_method():
    message = load_error(methods=())
    assert "no method" in message
    assert "kd" in message and "fitnets" in message


def test_method_selected_twice():
    message = load_error(methods=("kd", "kd"))
    assert "twice" in message


def test_methods_as_string_in_file(tmp_path):
    path = write(tmp_path, "m.yaml", "methods: fitnets\n")
    assert load([path], methods=()).methods == ["fitnets"]


def test_bare_key_routed_when_file_names_method_as_string(tmp_path):
    path = write(tmp_path, "m.yaml", "methods: fitnets\n")
    cfg = load([path], ["schedule=two_stage"], methods=())
    assert cfg.method_configs["fitnets"].schedule == "two_stage"


def test_bare_key_routed_when_file_names_method_as_list(tmp_path):
    path = write(tmp_path, "m.yaml", "methods: [fitnets]\n")
    cfg = load([path], ["schedule=two_stage"], methods=())
    assert cfg.method_configs["fitnets"].schedule == "two_stage"


# --------------------------------------------------------------------------- files


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    message = load_error([missing])
    assert "not found" in message
    assert "nope.yaml" in message


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "broken.yaml", "optim: {lr: 0.1\ntrain: [\n  - : :\n")
    message = load_error([path])
    assert "broken.yaml" in message
    assert "YAML" in message


def test_yaml_top_level_not_mapping(tmp_path):
    path = write(tmp_path, "list.yaml", "- a\n- b\n")
    message = load_error([path])
    assert "mapping" in message


def test_section_not_mapping(tmp_path):
    path = write(tmp_path, "sec.yaml", "optim: 0.1\n")
    message = load_error([path])
    assert "optim" in message
    assert "mapping" in message


# --------------------------------------------------------------------------- round trip


def test_to_dict_round_trip(tmp_path):
    path = write(tmp_path, "run.yaml", "teacher: {model: resnet10t, kwargs: {drop_rate: 0.1}}\n")
    cfg = load(
        [path],
        ["optim.lr=0.1", "train.epochs=3", "optim.milestones=[1, 2]", "fitnets.schedule=two_stage", "kd.temperature=2"],
        methods=("kd", "fitnets"),
    )
    data = cfg.to_dict()
    assert data["methods"] == ["kd", "fitnets"]
    assert data["optim"]["lr"] == 0.1 and data["train"]["epochs"] == 3
    assert data["fitnets"]["schedule"] == "two_stage"
    assert data["kd"]["temperature"] == 2.0
    assert data["teacher"]["kwargs"] == {"drop_rate": 0.1}
    back = config_from_dict(data, CLASSES)
    assert back == cfg
    assert back.to_dict() == data


def test_to_dict_is_plain_and_yaml_safe(tmp_path):
    import yaml

    cfg = load(overrides=["schedule=two_stage"], methods=("fitnets",))
    text = yaml.safe_dump(cfg.to_dict())
    path = write(tmp_path, "dumped.yaml", text)
    # A dumped config loads back through the YAML path to the same RunConfig.
    assert load([path], methods=()) == cfg


def test_config_from_dict_unknown_method():
    data = load().to_dict()
    data["methods"] = ["crd"]
    with pytest.raises(KdzooError) as info:
        config_from_dict(data, CLASSES)
    assert "crd" in str(info.value)
    assert "\n" not in str(info.value)
