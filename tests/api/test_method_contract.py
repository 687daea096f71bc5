"""What a method declares reaches the run: its plan reaches every hook, its declared terms are checked
when the run is built and skipped when a stage switches them off, and its terms are computed in
float32 outside autocast unless it opts in."""

import dataclasses
import types

import pytest
import torch

import kdzoo
from kdzoo.engine import build_trainer
from kdzoo.registry import load_registry
from tests.helpers import NoConfig, tiny_config


def _registry(*infos: kdzoo.MethodInfo):
    """The installed plugins plus one throwaway plugin module registering ``infos`` (one statement)."""
    module = types.ModuleType("contract_plugin")
    module.kdzoo_register_methods = kdzoo.registering(*infos)
    return load_registry(extra=[("contract_plugin", module)])


def _info(name, factory, **fields):
    return kdzoo.MethodInfo(name=name, factory=factory, config_class=NoConfig, paper="test", summary="test", **fields)


def _trainer(tmp_path, registry, methods, *sets):
    from kdzoo.config import load_config

    own = [s for s in sets if s.split(".", 1)[0] in methods]  # the methods' settings; the rest are the run's
    base = tiny_config(["kd"], *[s for s in sets if s not in own], out_dir=str(tmp_path))
    cfg = load_config([], own, methods, registry.config_classes())
    cfg = dataclasses.replace(
        cfg, teacher=base.teacher, student=base.student, data=base.data, optim=base.optim, train=base.train
    )
    return build_trainer(cfg, registry, tmp_path / "run", show_progress=False)


class Planned:
    """Pairs the last stages once (its plan) and reads the pair in every hook, keeping nothing on self."""

    calls: list[str] = []

    def __init__(self, config):
        pass

    @kdzoo.hookimpl
    def kdzoo_plan(self, teacher, student):
        Planned.calls.append("plan")
        return {"pair": (len(student.stages) - 1, len(teacher.stages) - 1)}

    @kdzoo.hookimpl
    def kdzoo_feature_taps(self, plan):
        s, t = plan["pair"]
        return kdzoo.Taps(student=(s,), teacher=(t,))

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self, student, teacher, plan):
        s, t = plan["pair"]
        return {"planned": student.feature(s).mean() * 0 + teacher.feature(t).mean().abs()}

    @kdzoo.hookimpl
    def kdzoo_loss_weights(self, plan):
        return {"planned": 0.5}


def test_a_methods_plan_is_made_once_first_and_reaches_each_of_its_hooks(tmp_path):
    Planned.calls = []
    registry = _registry(_info("planned", Planned, terms=("planned",)))
    trainer = _trainer(tmp_path, registry, ["planned"])
    assert Planned.calls == ["plan"]
    x, y = next(trainer.data.train.epoch(0))
    result = trainer.step.losses(kdzoo.Batch(x, y), kdzoo.When(trainer.stages[0]))
    assert set(result.terms) == {"ce", "planned"} and result.weights["planned"] == 0.5


class Declared:
    called = 0

    def __init__(self, config):
        pass

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self, student):
        Declared.called += 1
        return {"first": student.logits.square().mean(), "second": student.logits.abs().mean()}

    @kdzoo.hookimpl
    def kdzoo_schedule(self, epochs):
        return [kdzoo.Stage("plain", epochs, losses=frozenset({"ce"})), kdzoo.Stage("both", epochs)]


def test_a_method_whose_declared_terms_a_stage_switches_off_is_not_called(tmp_path):
    Declared.called = 0
    trainer = _trainer(tmp_path, _registry(_info("declared", Declared, terms=("first", "second"))), ["declared"])
    x, y = next(trainer.data.train.epoch(0))
    plain, both = trainer.stages
    assert set(trainer.step.losses(kdzoo.Batch(x, y), kdzoo.When(plain)).terms) == {"ce"} and Declared.called == 0
    assert set(trainer.step.losses(kdzoo.Batch(x, y), kdzoo.When(both)).terms) == {"ce", "first", "second"}
    assert Declared.called == 1


def test_a_term_a_method_did_not_declare_is_one_line(tmp_path):
    trainer = _trainer(tmp_path, _registry(_info("declared", Declared, terms=("first",))), ["declared"])
    x, y = next(trainer.data.train.epoch(0))
    with pytest.raises(kdzoo.KdzooError, match="returned loss term 'second', which its MethodInfo.terms"):
        trainer.step.losses(kdzoo.Batch(x, y), kdzoo.When(trainer.stages[1]))


class Clashing(Declared):
    pass


def test_two_methods_declaring_one_term_are_refused_when_the_run_is_built(tmp_path):
    registry = _registry(
        _info("declared", Declared, terms=("first", "second")), _info("clashing", Clashing, terms=("second",))
    )
    with pytest.raises(kdzoo.KdzooError, match="methods 'declared' and 'clashing' both produce loss term 'second'"):
        _trainer(tmp_path, registry, ["declared", "clashing"])


class StrayWeight:
    def __init__(self, config):
        pass

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self, student):
        return {"real": student.logits.mean()}

    @kdzoo.hookimpl
    def kdzoo_loss_weights(self):
        return {"reel": 2.0}  # a typo: the weight would silently weight nothing


def test_a_weight_for_a_term_no_method_returns_is_refused_when_the_run_is_built(tmp_path):
    registry = _registry(_info("stray", StrayWeight, terms=("real",)))
    with pytest.raises(kdzoo.KdzooError, match=r"method 'stray' weights term\(s\) reel that no selected method"):
        _trainer(tmp_path, registry, ["stray"])


class Precision:
    seen: dict[str, torch.dtype] = {}

    def __init__(self, config):
        pass

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self, student, teacher):
        product = student.logits @ teacher.logits.T  # a matmul: bf16 under autocast
        Precision.seen[type(self).__name__] = product.dtype
        return {type(self).__name__.lower(): product.float().mean() * 0}


class OptedIn(Precision):
    pass


def test_terms_are_computed_in_float32_outside_autocast_unless_a_method_opts_in(tmp_path):
    registry = _registry(
        _info("precision", Precision, terms=("precision",)),
        _info("optedin", OptedIn, terms=("optedin",), autocast=True),
    )
    trainer = _trainer(tmp_path, registry, ["precision", "optedin"], "train.precision=bf16")
    x, y = next(trainer.data.train.epoch(0))
    trainer.step.losses(kdzoo.Batch(x, y), kdzoo.When(trainer.stages[0]))
    assert Precision.seen == {"Precision": torch.float32, "OptedIn": torch.bfloat16}


def test_registering_is_the_registration_hook_in_one_statement():
    info = _info("one_statement", Declared)
    hook = kdzoo.registering(info)
    registered = []
    hook(registered.append)
    assert registered == [info] and getattr(hook, "kdzoo_impl", None) is not None


class Configured:
    """Returns a second term only when its config says so (its terms a function of the config)."""

    def __init__(self, config):
        self.config = config

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self, student):
        terms = {"always": student.logits.mean()}
        return {**terms, "sometimes": student.logits.std()} if self.config.extra else terms


@dataclasses.dataclass
class ConfiguredConfig:
    extra: bool = False


class OwnStage:
    """Trains its own module alone in a first stage, named from the modules its schedule receives."""

    def __init__(self, config):
        pass

    @kdzoo.hookimpl
    def kdzoo_build_modules(self):
        return {"head": torch.nn.Linear(10, 10)}

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self, student, modules):
        return {"own": modules["head"](student.logits).square().mean()}

    @kdzoo.hookimpl
    def kdzoo_schedule(self, epochs, modules):
        head = modules["head"]
        return [
            kdzoo.Stage("head", 1, trainable=lambda _student, _modules: head.parameters()),
            kdzoo.Stage("all", epochs),
        ]


def test_declared_terms_may_follow_the_config(tmp_path):
    info = kdzoo.MethodInfo(
        name="configured",
        factory=Configured,
        config_class=ConfiguredConfig,
        paper="test",
        summary="test",
        terms=lambda config: ("always", "sometimes") if config.extra else ("always",),
    )
    registry = _registry(info)
    for extra, expected in ((False, {"ce", "always"}), (True, {"ce", "always", "sometimes"})):
        trainer = _trainer(tmp_path / str(extra), registry, ["configured"], f"configured.extra={extra}")
        x, y = next(trainer.data.train.epoch(0))
        assert set(trainer.step.losses(kdzoo.Batch(x, y), kdzoo.When(trainer.stages[0])).terms) == expected


def test_a_schedule_names_what_its_stages_train_from_its_own_modules(tmp_path):
    trainer = _trainer(tmp_path, _registry(_info("ownstage", OwnStage, terms=("own",))), ["ownstage"])
    head = trainer.modules["ownstage"]["head"]
    trainer.step.begin(trainer.stages[0])
    trained = {id(p) for group in trainer.step.optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in head.parameters()}


def test_the_toolkit_holds_the_shared_building_blocks_and_0_1_0s_kdzoo_memory_still_answers():
    import kdzoo.memory
    import kdzoo.toolkit

    for name in ("connector", "ConvRegressor", "rand_augment", "rotation", "cutout", "SampleMemory", "average_pooled"):
        assert callable(getattr(kdzoo.toolkit, name)), name
    assert (
        kdzoo.memory.SampleMemory is kdzoo.toolkit.SampleMemory and kdzoo.memory.check_fits is kdzoo.toolkit.check_fits
    )
