"""Names are never taken in silence (issue 29, item 7): what happens when installed distributions register
the same method name, or declare the same entry-point name, as each other or as a built-in.

Three throwaway packages are installed for real (``pip install --target``, once for the module) and put
ahead of kdzoo on ``sys.path``, so their entry points are found first, as a plugin author's or an
attacker's package would be:

- ``kd-rival`` 1.0, entry point ``rival``: registers ``kd`` (the built-in's name) and ``logit_match``;
- ``Logit_Match.Pkg`` 2.0, entry point ``pkt`` (a built-in's entry-point name): registers ``logit_match``;
- ``at-shadow`` 0.1, entry point ``at`` (a built-in's): fails at import.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys

import pytest
import timm
import torch
from click.testing import CliRunner

import kdzoo
from kdzoo.cli import main
from kdzoo.config import load_config
from kdzoo.registry import load_registry, registry, reset_registry
from tests.helpers import TINY, pip_install_into, registry_with_method

KDZOO = f"kdzoo {importlib.metadata.version('kdzoo')}"

METHOD = """
@dataclass
class {cls}Config:
    weight: float = 1.0


class {cls}:
    def __init__(self, config):
        self.config = config

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self, student, teacher):
        return {{"{term}": F.mse_loss(student.logits, teacher.logits)}}

    @kdzoo.hookimpl
    def kdzoo_loss_weights(self):
        return {{"{term}": self.config.weight}}
"""
HEADER = "from dataclasses import dataclass\n\nimport torch.nn.functional as F\n\nimport kdzoo\n"


def _registers(*methods: tuple[str, str, str]) -> str:
    """A 0.1.0-style plugin module registering ``(name, class, term)`` methods (positional MethodInfo)."""
    body = "".join(METHOD.format(cls=cls, term=term) for _, cls, term in methods)
    calls = "".join(
        f"    register(kdzoo.MethodInfo({name!r}, {cls}, {cls}Config, 'none', '{term} by {cls}'))\n"
        for name, cls, term in methods
    )
    return f"{HEADER}{body}\n\n@kdzoo.hookimpl\ndef kdzoo_register_methods(register):\n{calls}"


PACKAGES = {  # distribution: (version, module, entry point, module source)
    "kd-rival": ("1.0", "kd_rival", "rival", _registers(("kd", "Rival", "rival_kd"), ("logit_match", "Match", "rm"))),
    "Logit_Match.Pkg": ("2.0", "logit_match_pkg", "pkt", _registers(("logit_match", "Twin", "twin_match"))),
    "at-shadow": ("0.1", "at_shadow", "at", "raise ImportError('at-shadow needs a missing library')\n"),
}
MODULES = [module for _, module, _, _ in PACKAGES.values()]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The three packages installed with pip into one target folder (once for the module)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("installing the test packages needs setuptools in this environment (offline, no isolation)")
    root = tmp_path_factory.mktemp("names")
    for dist, (version, module, entry_point, source) in PACKAGES.items():
        src = root / "src" / module
        (src / module).mkdir(parents=True)
        (src / module / "__init__.py").write_text(source)
        (src / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "{dist}"\nversion = "{version}"\n\n'
            f'[project.entry-points.kdzoo]\n{entry_point} = "{module}"\n\n'
            f'[tool.setuptools]\npackages = ["{module}"]\n'
        )
        pip_install_into(src, root / "site")
    return root / "site"


def _forget_modules() -> None:
    for module in MODULES:
        sys.modules.pop(module, None)


@pytest.fixture(scope="module")
def names(site):
    """The process-wide registry with the packages found before kdzoo's own entry points."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site))
        reset_registry()
        try:
            yield registry()
        finally:
            reset_registry()
            _forget_modules()


def _loaded_with(site, monkeypatch, *, first: bool):
    """A registry loaded with the packages' folder first or last on ``sys.path``."""
    if first:
        monkeypatch.syspath_prepend(str(site))
    else:
        monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    _forget_modules()
    try:
        return load_registry()
    finally:
        _forget_modules()


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def _both_named(text: str) -> None:
    """``text`` names both suppliers of ``kd`` and both qualified names that select one."""
    assert f"{KDZOO} (plugin 'kd')" in text and "kd-rival 1.0 (plugin 'rival')" in text, text
    assert "kdzoo:kd" in text and "kd-rival:kd" in text, text


def test_a_method_name_two_distributions_register_is_a_clash_line_in_kdzoo_list_naming_both(names):
    listed = _cli("list")
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    clash = [line for line in lines if line.startswith("[clash]")]
    assert any(
        f"method 'kd' is registered by 2 distributions, {KDZOO} (plugin 'kd') and kd-rival 1.0 (plugin 'rival')" in line
        and line.endswith("select kdzoo:kd or kd-rival:kd")
        for line in clash
    ), clash
    assert any(  # two third-party packages clash with each other too
        "method 'logit_match' is registered by 2 distributions, kd-rival 1.0 (plugin 'rival') and "
        "Logit_Match.Pkg 2.0 (plugin 'logit-match-pkg:pkt')" in line
        for line in clash
    ), clash
    rows = {line.split()[0] for line in lines if line and not line.startswith((" ", "=", "["))}
    assert {"kdzoo:kd", "kd-rival:kd", "kd-rival:logit_match", "logit-match-pkg:logit_match", "pkt", "at"} <= rows
    assert not {"kd", "logit_match"} & rows  # a clashing name alone is no row: it selects nothing


def test_kdzoo_plugins_names_both_suppliers_and_both_plugins_of_a_shared_entry_point(names):
    shown = _cli("plugins")
    assert shown.exit_code == 0, shown.output
    clash = [line for line in shown.output.splitlines() if line.startswith("CLASH: ")]
    assert any("method 'kd' is registered by 2 distributions" in line for line in clash), clash
    _both_named(next(line for line in clash if "method 'kd'" in line))
    assert any(
        "entry point 'pkt' is declared by 2 distributions, Logit_Match.Pkg 2.0 and " in line
        and "as plugins 'logit-match-pkg:pkt' and 'kdzoo:pkt'" in line
        for line in clash
    ), clash
    assert "logit-match-pkg:pkt: Logit_Match.Pkg 2.0\n  methods: logit_match" in shown.output
    assert "kdzoo:pkt: kdzoo " in shown.output


def test_a_package_found_first_that_registers_kd_does_not_replace_the_built_in(names):
    order = [plugin.name for plugin in names.plugins]
    assert order.index("rival") < order.index("kd")  # the attack's condition: the rival is discovered first
    assert "kd" not in names.methods and "kd" not in names.failures
    assert names.get("kdzoo:kd").distribution == "kdzoo" and names.get("kd-rival:kd").distribution == "kd-rival"
    assert names.get("kdzoo:kd").factory is not names.get("kd-rival:kd").factory


@pytest.mark.parametrize("route", ["run", "show", "config file", "get_method", "method_config"])
def test_selecting_a_clashing_name_is_an_error_naming_both_and_how_to_choose(names, route, tmp_path):
    if route in ("run", "show", "config file"):
        (tmp_path / "kd.yaml").write_text("methods: [kd]\n")
        args = {
            "run": ["run", "--method", "kd", "--set", f"train.out_dir={tmp_path / 'runs'}"],
            "show": ["show", "kd"],
            "config file": ["run", "--config", str(tmp_path / "kd.yaml"), "--set", f"train.out_dir={tmp_path / 'r'}"],
        }[route]
        done = _cli(*args)
        assert done.exit_code == 1, done.output
        message = done.output
    else:
        with pytest.raises(kdzoo.KdzooError) as refused:
            if route == "get_method":
                kdzoo.get_method(
                    "kd", student=timm.create_model("test_resnet"), teacher=timm.create_model("test_resnet")
                )
            else:
                kdzoo.method_config("kd")
        message = str(refused.value)
    _both_named(message)
    assert "select one by DISTRIBUTION:METHOD" in message and "--method kdzoo:kd" in message
    assert not any(tmp_path.glob("r*/*"))  # refused before anything ran


def test_a_setting_under_a_clashing_name_is_the_clash_error_not_an_unknown_key(names):
    done = _cli("run", "--method", "kdzoo:kd", "--set", "kd.temperature=2")
    assert done.exit_code == 1, done.output
    _both_named(done.output)
    assert "--set kdzoo:kd.KEY=VALUE" in done.output


def test_a_qualified_name_selects_one_distributions_method_and_trains_a_tiny_step(names, tmp_path, monkeypatch):
    monkeypatch.setenv("KDZOO_CACHE", str(tmp_path / "cache"))
    sets = [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", "train.epochs=1"]
    sets.append(f"train.out_dir={tmp_path / 'runs'}")
    for method, term in [("kd-rival:kd", "rival_kd"), ("kdzoo:kd", "kd")]:
        ran = _cli("run", "--method", method, "--quiet", *(a for s in sets for a in ("--set", s)))
        assert ran.exit_code == 0, ran.output
        (run_dir,) = (tmp_path / "runs").glob(f"{method}-*")
        (record,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
        other = ({"rival_kd", "kd"} - {term}).pop()
        assert term in record["train"] and other not in record["train"]  # that distribution's method, alone
        assert json.loads((run_dir / "config.json").read_text())["methods"] == [method]  # the choice, recorded


def test_a_qualified_name_in_a_config_file_is_accepted_by_the_config_loader_with_its_section(names, tmp_path):
    config = tmp_path / "twin.yaml"
    config.write_text("methods: [logit-match-pkg:logit_match]\nlogit-match-pkg:logit_match:\n  weight: 3\n")
    cfg = load_config([config], ["weight=4"], [], names.config_classes(), names.failures)
    assert cfg.methods == ["logit-match-pkg:logit_match"]
    (settings,) = cfg.method_configs.values()
    assert type(settings).__name__ == "TwinConfig" and settings.weight == 4  # the file's section, then --set
    assert load_config([], [], ["kdzoo:kd"], names.config_classes()).methods == ["kdzoo:kd"]


def test_a_qualified_name_spelt_any_way_pip_accepts_selects_that_distribution(names):
    for spelling in ("logit-match-pkg", "Logit_Match.Pkg", "logit_match_pkg"):
        info = names.get(f"{spelling}:logit_match")
        assert info.distribution == "Logit_Match.Pkg" and info.name == f"{spelling}:logit_match"
    assert names.get("KDZOO:fitnets").distribution == "kdzoo"  # any method may be pinned to its distribution


def test_get_method_with_a_qualified_name_builds_that_distributions_method(names):
    student, teacher = timm.create_model("test_resnet"), timm.create_model("test_resnet")
    objective = kdzoo.get_method("kd-rival:kd", student=student, teacher=teacher, weight=2)
    (method,) = objective.methods.values()
    assert type(method).__name__ == "Rival" and method.config.weight == 2
    loss = objective(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert torch.isfinite(loss)


def test_a_qualified_name_of_a_distribution_without_the_method_is_unknown_naming_those_with_it(names):
    with pytest.raises(
        kdzoo.KdzooError,
        match=r"distribution 'at-shadow' registers no method 'kd' \(installed: kdzoo:kd, kd-rival:kd\)",
    ):
        names.get("at-shadow:kd")


@pytest.mark.parametrize("first", [True, False], ids=["package found first", "package found last"])
def test_an_entry_point_named_like_a_built_in_loads_beside_it_whichever_is_found_first(site, monkeypatch, first):
    reg = _loaded_with(site, monkeypatch, first=first)
    plugins = {plugin.name: plugin for plugin in reg.plugins}
    assert plugins["kdzoo:pkt"].distribution == "kdzoo" and plugins["kdzoo:pkt"].methods == ["pkt"]
    assert plugins["logit-match-pkg:pkt"].methods == ["logit_match"]
    assert reg.get("pkt").distribution == "kdzoo"  # the built-in is neither dropped nor replaced
    assert {plugin for plugin, _, _ in reg.shared_entry_points["pkt"]} == {"kdzoo:pkt", "logit-match-pkg:pkt"}
    assert set(reg.failures) == {"at-shadow:at"}


def test_a_broken_package_with_a_built_ins_entry_point_name_fails_under_its_own_name_and_the_built_in_runs(names):
    assert names.failures["at-shadow:at"] == "ImportError: at-shadow needs a missing library"
    assert names.get("at").distribution == "kdzoo" and "kdzoo:at" in [plugin.name for plugin in names.plugins]
    listed = _cli("list").output
    assert "plugin 'at-shadow:at' did not load: ImportError" in listed
    assert "entry point 'at' is declared by 2 distributions, at-shadow 0.1 and " in listed


def test_disabling_one_distributions_plugin_by_its_qualified_name_leaves_the_other(site, monkeypatch):
    monkeypatch.setenv("KDZOO_DISABLE_PLUGINS", "Logit_Match.Pkg:pkt,at-shadow:at")
    reg = _loaded_with(site, monkeypatch, first=True)
    assert "pkt" in [plugin.name for plugin in reg.plugins] and "at" in [plugin.name for plugin in reg.plugins]
    assert reg.get("logit_match").distribution == "kd-rival"  # no clash left: the bare name selects it
    assert "pkt" not in reg.shared_entry_points and not reg.failures


def test_method_sources_name_the_distribution_version_and_plugin_of_each_selected_method(names):
    version = importlib.metadata.version("kdzoo")
    assert names.method_sources(["kd-rival:kd", "kdzoo:kd", "pkt"]) == {
        "kd-rival:kd": {"method": "kd", "distribution": "kd-rival", "version": "1.0", "plugin": "rival"},
        "kdzoo:kd": {"method": "kd", "distribution": "kdzoo", "version": version, "plugin": "kd"},
        "pkt": {"method": "pkt", "distribution": "kdzoo", "version": version, "plugin": "kdzoo:pkt"},
    }


def test_a_colon_in_a_method_name_is_refused_since_it_qualifies_names():
    reg = registry_with_method("mine:kd", object)
    assert "reserved or invalid" in reg.failures["mine:kd_plugin"] and "mine:kd" not in reg.methods


def test_one_plugin_registering_a_name_twice_fails_under_its_own_name():
    @kdzoo.hookimpl
    def kdzoo_register_methods(register):
        for _ in range(2):
            register(kdzoo.MethodInfo("twice", object, dict, "none", "twice"))

    plugin = type(sys)("twice_plugin")
    plugin.kdzoo_register_methods = kdzoo_register_methods
    reg = load_registry(extra=[("twice_plugin", plugin)])
    assert reg.failures["twice_plugin"] == "ValueError: method name 'twice' is registered twice by this plugin"
    assert "twice" not in reg.methods and "twice" not in reg.clashes
