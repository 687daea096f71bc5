"""Every built-in method passes the conformance suite plugin authors run (kdzoo.testing), and registers
with its kind."""

import pytest

from kdzoo.testing import conformance_cases, run_case

CASES = [
    *conformance_cases("kd"),
    *conformance_cases("fitnets"),
    *conformance_cases("fitnets", pairs=["resnet->mobilenetv3"], settings=("schedule=two_stage",)),
    *conformance_cases("at"),
    *conformance_cases("rkd"),
    *conformance_cases("self-distill", pairs=["resnet->resnet"]),
    *conformance_cases("self-distill", pairs=["resnet->mobilenetv3"], settings=("variant=byot",)),
    *conformance_cases("dkd"),
    *conformance_cases("dkd", pairs=["resnet->resnet"], settings=("logit_standardization=true",)),
    *conformance_cases("kd", pairs=["vit->resnet"], settings=("logit_standardization=true",)),
    *conformance_cases("dist"),
    *conformance_cases("dist_plus"),
    *conformance_cases("tfkd", pairs=["resnet->resnet"]),
    *conformance_cases("pkt"),
    *conformance_cases("sp"),
    *conformance_cases("nst"),
    *conformance_cases("vid"),
    *conformance_cases("cc"),
    *conformance_cases("fsp", pairs=["resnet->resnet-same-widths"], settings=("fsp.init_epochs=1",)),
    *conformance_cases("ab", settings=("ab.init_epochs=1",)),
    *conformance_cases("ofd"),
    *conformance_cases("ft", settings=("ft.paraphrase_epochs=1",)),
    *conformance_cases("ctkd"),
    *conformance_cases("ickd"),
    *conformance_cases("srd"),
    *conformance_cases("skd"),
    *conformance_cases("pad", settings=("pad.l2_epochs=1",)),
    *conformance_cases("reviewkd", settings=("reviewkd.warmup_epochs=1",)),
    *conformance_cases("deit", pairs=["resnet->deit"]),
    *conformance_cases("deit", pairs=["resnet->deit"], settings=("deit.variant=soft",)),
    *conformance_cases("crd", pairs=["resnet->resnet", "vit->resnet"], settings=("crd.nce_k=64",)),
    *conformance_cases("crd", pairs=["vit->resnet"], settings=("crd.nce_k=64", "crd.memory=queue")),
    *conformance_cases("mlkd", pairs=["resnet->resnet", "vit->resnet"]),
    *conformance_cases("sskd", pairs=["resnet->resnet", "vit->resnet"], settings=("sskd.head_epochs=1",)),
    *conformance_cases("simkd", pairs=["resnet->resnet", "vit->resnet", "resnet->mobilenetv3"]),
    *conformance_cases("ofa", pairs=["vit->resnet", "resnet->vit"]),
    *conformance_cases("mtkd", pairs=["resnet+vit->resnet", "resnet+resnet->mobilenetv3"]),
    *conformance_cases("mtkd", pairs=["resnet+vit->resnet"], settings=("mtkd.weighting=entropy",)),
    *conformance_cases("kd", pairs=["resnet+vit->resnet"]),  # a one-teacher method on an ensemble
]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """One cache for the module: each tiny teacher is trained once."""
    return tmp_path_factory.mktemp("teachers")


@pytest.mark.parametrize("case", CASES, ids=[f"{c}{'-' + '-'.join(c.settings) if c.settings else ''}" for c in CASES])
def test_builtin_method_conforms(case, tmp_path, teachers):
    run_case(case, tmp_path, cache=teachers)


def test_the_suite_leaves_the_environment_and_the_users_cache_alone(tmp_path, monkeypatch):
    import os

    user_cache = tmp_path / "user-cache"
    monkeypatch.setenv("KDZOO_CACHE", str(user_cache))
    run_case(conformance_cases("kd", pairs=["resnet->resnet"])[2], tmp_path / "case", cache=tmp_path / "teachers")
    assert os.environ["KDZOO_CACHE"] == str(user_cache) and not user_cache.exists()
    assert any((tmp_path / "teachers" / "teachers").iterdir())  # the tiny teacher went to the testing cache
    monkeypatch.delenv("KDZOO_CACHE")
    run_case(conformance_cases("kd", pairs=["resnet->resnet"])[2], tmp_path / "again", cache=tmp_path / "teachers")
    assert "KDZOO_CACHE" not in os.environ


def test_the_four_register_with_their_kind():
    from kdzoo.registry import registry

    kinds = {name: registry().methods[name].kind for name in ("ickd", "srd", "skd", "pad")}
    assert kinds == {"ickd": "feature", "srd": "feature", "skd": "logit", "pad": "feature"}
