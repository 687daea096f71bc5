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


def test_a_saved_config_without_methods_is_a_run_without_methods():
    back = config_from_dict({"methods": [], "train": {"epochs": 3}}, CLASSES)  # a comparison's scratch run
    assert back.methods == [] and back.method_configs == {} and back.train.epochs == 3


def test_config_from_dict_without_methods_is_one_line():
    for damaged in ({}, {"methods": "kd"}, {"methods": [1]}, ["kd"]):
        with pytest.raises(KdzooError, match="a saved config must hold a mapping with a list of 'methods'"):
            config_from_dict(damaged, CLASSES)


# --------------------------------------------------------------------------- sizes: alias bombs, long values


def _bomb(levels: int = 8) -> str:
    """A YAML mapping of 9^levels values written in ~60 bytes per level."""
    lines = ["{a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f", a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "".join(lines) + "}"


def test_alias_bomb_in_a_file_is_refused_before_it_expands(tmp_path):
    path = write(tmp_path, "bomb.yaml", "student:\n  kwargs: " + _bomb() + "\n")
    assert path.stat().st_size < 600
    message = load_error([path])
    assert "bomb.yaml: more than 10000 values once its YAML aliases are expanded" in message


def test_alias_bomb_in_a_set_value_is_refused():
    message = load_error(overrides=["student.kwargs=" + _bomb()])
    assert message.startswith("--set student.kwargs: more than 10000 values")


def test_a_few_aliases_are_fine(tmp_path):
    path = write(tmp_path, "anchors.yaml", "teacher: {kwargs: &common {drop_rate: 0.1}}\nstudent: {kwargs: *common}\n")
    cfg = load([path])
    assert cfg.teacher.kwargs == cfg.student.kwargs == {"drop_rate": 0.1}


def test_recursive_alias_is_refused():
    assert "a config value cannot contain itself" in load_error(overrides=["student.kwargs=&a {x: *a}"])


def test_nesting_is_bounded():
    deep = "[" * 40 + "]" * 40
    assert "nested more than 32 levels deep" in load_error(overrides=[f"student.kwargs={{a: {deep}}}"])
    nested = "[" * 9 + "]" * 9
    assert "config key 'student.kwargs': nested more than 8 levels" in load_error(
        overrides=[f"student.kwargs={{a: {nested}}}"]
    )


def test_kwargs_sizes_and_keys_are_bounded():
    many = "{" + ", ".join(f"k{i}: [1,1,1,1,1,1,1,1,1,1]" for i in range(100)) + "}"  # 1201 values
    message = load_error(overrides=["student.kwargs=" + many])
    assert "config key 'student.kwargs': holds more than 1000 values" in message
    assert "config key 'student.kwargs (a key)': expected a string" in load_error(overrides=["student.kwargs={1: 2}"])


def test_strings_lists_and_ints_are_bounded(tmp_path):
    long = write(tmp_path, "long.yaml", f"train: {{out_dir: {'x' * 5000}}}\n")
    assert "a string of 5000 characters at line 1 (at most 4096)" in load_error([long])
    assert "longer than 4096 characters" in load_error(overrides=["train.out_dir=" + "x" * 5000])
    milestones = str(list(range(1001)))
    path = write(tmp_path, "list.yaml", f"optim: {{milestones: {milestones}}}\n")
    assert "config key 'optim.milestones': 1001 entries (at most 1000)" in load_error([path])
    assert "does not fit a 64-bit integer" in load_error(overrides=["train.epochs=0x" + "f" * 40])
    assert "a number of 130 characters" in load_error(overrides=["train.epochs=0x" + "f" * 128])
    assert "contains a NUL character" in load_error(overrides=['train.out_dir="runs\\0x"'])


def test_values_in_error_messages_are_cut_short():
    message = load_error(overrides=["train.epochs=[" + ", ".join(["123456789"] * 300) + "]"])
    assert message.startswith("config key 'train.epochs': expected an integer, got [123456789, ")
    assert len(message) < 200
    message = load_error(overrides=["optim.name=" + "x" * 3000])
    assert len(message) < 300 and "'sgd'" in message


def test_huge_set_keys_are_one_short_line():
    assert "more than 16 dotted parts" in load_error(overrides=["student.kwargs" + ".a" * 20 + "=1"])
    message = load_error(overrides=["a" * 3000 + "=1"])
    assert message.startswith("unknown config key 'aaa") and len(message) < 600


# --------------------------------------------------------------------------- encodings and odd files


def test_config_files_must_be_utf8_text(tmp_path):
    (tmp_path / "utf16.yaml").write_text("train: {epochs: 2}\n", encoding="utf-16")
    assert "utf16.yaml is not UTF-8 text (UTF-16 or binary): save it as UTF-8" in load_error([tmp_path / "utf16.yaml"])
    (tmp_path / "latin1.yaml").write_bytes("train: {name: caf\u00e9}\n".encode("latin-1"))
    assert "latin1.yaml is not UTF-8 text (byte 0xe9 at offset 17)" in load_error([tmp_path / "latin1.yaml"])
    (tmp_path / "bom.yaml").write_bytes("train: {epochs: 2}\n".encode("utf-8-sig"))
    assert load([tmp_path / "bom.yaml"]).train.epochs == 2  # a UTF-8 BOM (Notepad's) is fine


def test_a_folder_or_fifo_as_config_file_is_one_line(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.yaml")
    assert "pipe.yaml is not a regular file" in load_error([tmp_path / "pipe.yaml"])  # never opened: it would block
    assert "is not a regular file" in load_error([tmp_path])


def test_an_impossible_yaml_value_is_one_line():
    assert "a value cannot be read (day is out of range for month)" in load_error(overrides=["train.name=2021-02-30"])


def test_an_int_beyond_a_float_is_one_line():
    from kdzoo.config import build

    with pytest.raises(KdzooError, match="config key 'optim.lr': <an integer of 1329 bits> is out of a float's range"):
        build(OptimConfig, {"lr": 10**400}, "optim")


# --------------------------------------------------------------------------- ranges of the core sections


@pytest.mark.parametrize(
    "setting, needle",
    [
        ("data.train_limit=-1000", "data.train_limit': must be >= 1, got -1000"),
        ("data.train_limit=0", "data.train_limit': must be >= 1, got 0"),
        ("data.img_size=1", "data.img_size': must be >= 8"),
        ("data.views=-1", "data.views': must be >= 0"),
        ("data.num_workers=-2", "data.num_workers': must be >= 0"),
        ("optim.lr=.nan", "optim.lr': must be a finite number, got nan"),
        ("optim.lr=-.inf", "optim.lr': must be a finite number, got -inf"),
        ("optim.momentum=-0.1", "optim.momentum': must be in [0, 1)"),
        ("optim.momentum=1", "optim.momentum': must be in [0, 1)"),
        ("optim.weight_decay=-1e-4", "optim.weight_decay': must be >= 0"),
        ("optim.gamma=0", "optim.gamma': must be > 0"),
        ("optim.milestones=[3, -1]", "optim.milestones[1]': must be >= 0, got -1"),
        ("teacher.train.optim.lr=.nan", "teacher.train.optim.lr': must be a finite number"),
        ("train.log_every=0", "train.log_every': must be > 0, got 0"),
        ("train.checkpoint_every=-1", "train.checkpoint_every': must be >= 0"),
        ("train.seed=-1", "train.seed': must be in [0, 2**32 - 1]"),
        ("teacher.train.seed=4294967296", "teacher.train.seed': must be in [0, 2**32 - 1]"),
    ],
)
def test_out_of_range_core_settings_are_one_line(setting, needle):
    assert needle in load_error(overrides=[setting])


def test_nesterov_needs_momentum():
    assert "Nesterov momentum needs optim.momentum > 0" in load_error(
        overrides=["optim.nesterov=true", "optim.momentum=0"]
    )
    assert load(overrides=["optim.nesterov=true", "optim.name=adam", "optim.momentum=0"]).optim.nesterov


@pytest.mark.parametrize("name", ["../escaped", "..", ".", "/tmp/abs", "a/b", "a\\b", "x" * 256])
def test_run_name_must_be_one_folder_name(name):
    assert "config key 'train.name': must be a single folder name" in load_error(overrides=[f"train.name='{name}'"])


@pytest.mark.parametrize("name", ["my-run", "kd+at-seed0", "a..b", "", "x" * 255])
def test_run_names_that_stay_inside_out_dir_are_fine(name):
    assert load(overrides=[f"train.name='{name}'"]).train.name == name


def test_a_config_made_in_code_is_validated_by_load_data():
    from kdzoo.data import load_data

    with pytest.raises(KdzooError, match="data.train_limit': must be >= 1, got -5"):
        load_data(DataConfig(name="synthetic", train_limit=-5), seed=0)


# --------------------------------------------------------------------------- method configs


def _builtin_config_classes() -> dict[str, type]:
    from kdzoo.registry import registry

    return registry().config_classes()


def _fields(cls, pick) -> list[str]:
    """The float fields of a config class whose names ``pick`` accepts (types are strings under
    ``from __future__ import annotations``)."""
    import dataclasses

    return [f.name for f in dataclasses.fields(cls) if f.type in ("float", float) and pick(f.name)]


def _is_weight(name: str) -> bool:
    return name.endswith("weight") or name in ("alpha", "beta", "gamma")  # DKD's, AT's and DIST's term weights


def _is_temperature(name: str) -> bool:
    return "temperature" in name or name == "tau"


@pytest.mark.parametrize("method", sorted(_builtin_config_classes()))
def test_every_builtin_method_refuses_negative_weights_and_temperatures(method):
    from kdzoo.config import build

    cls = _builtin_config_classes()[method]
    build(cls, {}, method)  # its defaults are valid
    weights = _fields(cls, _is_weight)
    assert weights, f"{method}: no weight found to check"
    for name in weights:
        with pytest.raises(KdzooError, match=f"config key '{method}.{name}': must be"):
            build(cls, {name: -1.0}, method)
    for name in _fields(cls, _is_temperature):
        with pytest.raises(KdzooError, match=f"config key '{method}.{name}': must be > 0"):
            build(cls, {name: 0.0}, method)
    for name in _fields(cls, lambda _: True):
        with pytest.raises(KdzooError, match=f"config key '{method}.{name}': must be a finite number"):
            build(cls, {name: float("nan")}, method)


def test_a_third_party_config_without_validate_keeps_working():
    from dataclasses import dataclass

    from kdzoo.config import build

    @dataclass
    class Theirs:
        weight: float = 1.0
        names: list[str] | None = None

    assert build(Theirs, {"weight": -3.0, "names": ["a"]}, "theirs") == Theirs(-3.0, ["a"])  # their range, not ours
    with pytest.raises(KdzooError, match="config key 'theirs.weight': must be a finite number, got inf"):
        build(Theirs, {"weight": float("inf")}, "theirs")  # bounds every config shares


def test_a_config_instance_passes_through_its_validate():
    from kdzoo.config import build

    with pytest.raises(KdzooError, match="config key 'kd.temperature': must be > 0"):
        build(KDConfig, KDConfig(temperature=-1.0), "kd")


def test_a_yaml_tag_never_constructs_anything(tmp_path):
    path = write(tmp_path, "tag.yaml", 'train: !!python/object/apply:os.system ["echo hi"]\n')
    assert "could not determine a constructor for the tag" in load_error([path])
