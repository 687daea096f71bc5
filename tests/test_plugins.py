import os
import subprocess
import sys
import types

import pytest

import kdzoo
from kdzoo.registry import load_registry
from tests.helpers import LOGIT_MSE_PLUGIN as THIRD_PARTY
from tests.helpers import TINY, registry_with_method
from tests.helpers import installed_distribution as _distribution


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _distribution(site, "kdzoo_logit_mse", "kdzoo_logit_mse", THIRD_PARTY, {"logit_mse": "kdzoo_logit_mse"})
    _distribution(
        site,
        "kdzoo_broken",
        "kdzoo_broken",
        "raise ImportError('needs a missing library')\n",
        {"broken": "kdzoo_broken"},
    )
    _distribution(
        site,
        "kdzoo_typo",
        "kdzoo_typo",
        "import kdzoo\n\n@kdzoo.hookimpl\ndef kdzoo_register_method(register):\n    pass\n",
        {"typo": "kdzoo_typo"},
    )
    return site


def _kdzoo(site, *args, cwd):
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "kdzoo", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_builtins_come_from_entry_points():
    reg = load_registry()
    assert {"kd", "fitnets"} <= set(reg.methods)
    assert reg.methods["kd"].plugin == "kd" and reg.methods["kd"].distribution == "kdzoo"
    assert reg.methods["fitnets"].version


def test_third_party_package_is_listed_and_runs(site, tmp_path):
    listed = _kdzoo(site, "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "logit_mse" in listed.stdout and "kdzoo_logit_mse 0.3" in listed.stdout
    assert "kd " in listed.stdout and "fitnets" in listed.stdout  # broken neighbours do not hide the rest
    assert "plugin 'broken' did not load: ImportError: needs a missing library" in listed.stdout
    assert "plugin 'typo' did not load" in listed.stdout and "kdzoo_register_methods" in listed.stdout

    sets = [
        a
        for s in [
            *TINY,
            "teacher.model=test_resnet",
            "student.model=test_resnet",
            "train.epochs=1",
            f"train.out_dir={tmp_path / 'runs'}",
        ]
        for a in ("--set", s)
    ]
    ran = _kdzoo(site, "run", "--method", "logit_mse", "--quiet", *sets, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "student test_resnet: top-1" in ran.stdout
    metrics = next((tmp_path / "runs").glob("logit_mse-*/metrics.jsonl")).read_text()
    assert '"logit_mse"' in metrics


def test_disable_plugins_by_name(monkeypatch):
    monkeypatch.setenv("KDZOO_DISABLE_PLUGINS", "fitnets")
    reg = load_registry()
    assert "fitnets" not in reg.methods and "kd" in reg.methods


def _module(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def test_unknown_method_hook_is_a_load_error():
    class Typo:
        def __init__(self, config):
            pass

        @kdzoo.hookimpl
        def kdzoo_compute_loss(self, student):  # misspelt: the spec is kdzoo_compute_losses
            return {}

    reg = registry_with_method("typo", Typo)
    assert "typo" not in reg.methods
    assert "kdzoo_compute_loss" in reg.failures["typo_plugin"]
    assert "kdzoo_compute_losses" in reg.failures["typo_plugin"]  # the suggestion
    assert "kd" in reg.methods


def test_duplicate_method_name_is_reported_by_plugin():
    reg = registry_with_method("kd", object)
    assert "already registered by plugin 'kd'" in reg.failures["kd_plugin"]
    assert reg.methods["kd"].plugin == "kd"


def test_method_config_is_typed():
    cfg = kdzoo.method_config("kd", temperature=2)
    assert cfg.temperature == 2.0 and isinstance(cfg.temperature, float) and cfg.ce_weight == 0.1
    with pytest.raises(kdzoo.KdzooError, match="temprature"):
        kdzoo.method_config("kd", temprature=2)


def test_misspelt_hook_argument_is_a_load_error():
    class Typo:
        def __init__(self, config):
            pass

        @kdzoo.hookimpl
        def kdzoo_compute_losses(self, student, teachr):
            return {}

    reg = registry_with_method("argtypo", Typo)
    assert "argtypo" not in reg.methods
    failure = reg.failures["argtypo_plugin"]
    assert "unknown argument(s) teachr" in failure and "teacher" in failure


def test_reserved_method_names_are_refused():
    reg = registry_with_method("train", object)
    assert "reserved or invalid" in reg.failures["train_plugin"]


def test_running_a_method_whose_plugin_failed_names_the_failure(site, tmp_path):
    ran = _kdzoo(site, "run", "--method", "broken", cwd=tmp_path)
    assert ran.returncode != 0
    assert "method plugin 'broken' failed to load: ImportError: needs a missing library" in ran.stderr
