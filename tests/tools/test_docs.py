"""The documents that drift are generated from the code or checked against it: the hook tables (from
kdzoo/hookspecs.py), docs/config.md and ``kdzoo show --config`` (from the config dataclasses), the
counts and lists that the docs and docstrings state."""

import dataclasses
import importlib
import importlib.util
import inspect
import pkgutil
import re
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from kdzoo import hookspecs
from kdzoo.cli import main
from kdzoo.config import as_dict, config_from_dict, schema
from kdzoo.config.schema import RunConfig, TrainConfig, config_keys

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _hooks():
    return {
        name: fn
        for spec in (hookspecs.DiscoverySpec, hookspecs.MethodSpec)
        for name, fn in vars(spec).items()
        if name.startswith("kdzoo_")
    }


# ----------------------------------------------------------------------------- hooks
def test_the_hook_tables_of_the_readme_and_the_plugin_guide_are_those_the_hookspecs_generate():
    assert _script("gen_hook_docs").stale() == [], "run: python scripts/gen_hook_docs.py"


def test_the_generated_hook_table_has_a_row_for_every_hook_saying_when_what_and_if_first_result_wins():
    table = _script("gen_hook_docs").hook_table()
    rows = {re.match(r"\| `(\w+)\(", line).group(1): line for line in table.splitlines()[2:]}
    assert set(rows) == set(_hooks())
    assert "(firstresult)" in rows["kdzoo_schedule"] and "(firstresult)" not in rows["kdzoo_compute_losses"]
    for name in ("README.md", "docs/writing-a-plugin.md"):
        assert table in (ROOT / name).read_text()


def test_every_argument_of_every_hook_has_a_param_line_and_every_param_line_an_argument():
    for name, fn in _hooks().items():
        args = [p for p in inspect.signature(fn).parameters if p != "self"]
        documented = re.findall(r"^\s*:param (\w+):", inspect.getdoc(fn), flags=re.M)
        assert documented == args, f"{name}: :param: lines {documented}, arguments {args}"


# ----------------------------------------------------------------------------- the run config
def test_every_field_of_every_core_config_dataclass_has_one_line_of_help():
    classes = [
        cls
        for cls in vars(schema).values()
        if inspect.isclass(cls) and dataclasses.is_dataclass(cls) and cls.__module__ == schema.__name__
    ]
    assert RunConfig in classes and TrainConfig in classes
    for cls in classes:
        if cls is schema.ConfigKey:
            continue
        for field in dataclasses.fields(cls):
            text = field.metadata.get("help", "")
            assert text.strip() and "\n" not in text, f"{cls.__name__}.{field.name} has no one-line help"


def test_docs_config_md_is_what_the_config_dataclasses_generate():
    generator = _script("gen_config_docs")
    assert generator.OUT.read_text() == generator.render(), "run: python scripts/gen_config_docs.py"


def test_docs_config_md_names_every_key_of_the_run_config():
    text = (ROOT / "docs" / "config.md").read_text()
    for key in ("data.train_limit", "train.device", "train.out_dir", "train.name", "teacher.train.optim.lr"):
        assert f"`{key}`" in text
    assert all(f"`{key.name}`" in text for key in config_keys())


def test_show_config_prints_every_core_key_with_its_default_and_help_as_yaml_that_loads_as_the_defaults():
    shown = CliRunner().invoke(main, ["show", "--config"])
    assert shown.exit_code == 0, shown.output
    assert yaml.safe_load(shown.output) == RunConfig(methods=[]).to_dict()
    for key in config_keys():
        assert f"# {key.help}\n" in shown.output


def test_show_config_with_a_method_prints_a_whole_config_that_a_run_accepts():
    from kdzoo.registry import registry

    shown = CliRunner().invoke(main, ["show", "--config", "kd"])
    assert shown.exit_code == 0, shown.output
    config = config_from_dict(yaml.safe_load(shown.output), registry().config_classes())
    assert config.methods == ["kd"] and config.train == TrainConfig()


def test_show_of_a_core_section_name_prints_that_section_rather_than_unknown_method():
    shown = CliRunner().invoke(main, ["show", "train"])
    assert shown.exit_code == 0, shown.output
    assert yaml.safe_load(shown.output) == {"train": as_dict(TrainConfig())}
    assert "# the run directory's name inside out_dir" in shown.output


def test_show_with_neither_a_method_nor_config_says_what_to_give():
    shown = CliRunner().invoke(main, ["show"])
    assert shown.exit_code == 2 and "--config" in shown.output


# ----------------------------------------------------------------------------- what docs and docstrings state
def test_the_cli_docstring_names_every_command():
    import kdzoo.cli

    first_line = kdzoo.cli.__doc__.splitlines()[0]
    named = set(re.findall(r"\w+", first_line.split(":", 1)[1]))
    assert set(main.commands) <= named, set(main.commands) - named


def test_kdzoo_losses_exports_every_public_function_of_its_method_modules_and_its_docstring_names_each():
    import kdzoo.losses

    public = set()
    for info in pkgutil.iter_modules(kdzoo.losses.__path__):
        if info.name == "shapes":  # pooling helpers, not a method's loss
            continue
        module = importlib.import_module(f"kdzoo.losses.{info.name}")
        public |= {
            name
            for name, obj in vars(module).items()
            if not name.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__ == module.__name__
        }
    assert public <= set(kdzoo.losses.__all__), public - set(kdzoo.losses.__all__)
    missing = [name for name in kdzoo.losses.__all__ if f"``{name}" not in kdzoo.losses.__doc__]
    assert missing == []


def test_the_architecture_doc_counts_the_built_in_plugin_modules_and_methods_as_they_load():
    from kdzoo.registry import registry

    built_in = [p for p in registry().plugins if p.distribution == "kdzoo" and p.methods]
    methods = sum(len(p.methods) for p in built_in)
    text = " ".join((ROOT / "docs" / "architecture.md").read_text().split())
    assert f"{len(built_in)} method modules registering {methods} methods" in text
