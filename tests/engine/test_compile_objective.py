"""The compiled objective (issue 16's CPU side): the same terms and gradients as eager, through the
library and the engine; a backend that fails falls back to eager in one line; a compiled run on cached
teacher outputs resumes bit-exactly; the bench compares a compiled kdzoo step with a floor compiled alike."""

from __future__ import annotations

import copy
import warnings

import pytest
import timm
import torch

import kdzoo
from kdzoo.engine import build_trainer
from kdzoo.registry import registry
from tests.helpers import tiny_config


def _pair():
    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=5), timm.create_model("test_resnet", num_classes=5)


def _step(objective, student, x, y, indices):
    student.zero_grad(set_to_none=True)
    result = objective.loss(kdzoo.Batch(x, y, indices), kdzoo.When(kdzoo.WHOLE_RUN, 0, 0.5))
    result.loss.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    return result.loss.detach(), {k: v.detach() for k, v in result.terms.items()}, grads


CRD = {"train_set": kdzoo.TrainingSet(64, torch.arange(64) % 5), "nce_k": 16}


@pytest.mark.parametrize(
    ("methods", "options", "backend"),
    [
        ("kd", {}, "inductor"),  # the default backend's own kernels, on the smallest graph (compiling takes time)
        (["kd", "at", "rkd"], {}, "aot_eager"),
        (["dkd", "fitnets"], {}, "aot_eager"),
        ("crd", CRD, "aot_eager"),
        # inductor once dropped the bank's clone and saved the bank for backward: the update then broke it
        ("crd", CRD, "inductor"),
    ],
    ids=["kd-inductor", "kd+at+rkd", "dkd+fitnets", "crd-with-host-syncs", "crd-inductor"],
)
def test_compiled_objective_computes_the_eager_terms_and_gradients(methods, options, backend):
    teacher, student = _pair()
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 5
    indices = torch.arange(8) if options else None
    results = []
    for compiled in (False, True):
        torch.manual_seed(1)  # the methods' modules start alike
        s = copy.deepcopy(student)
        objective = kdzoo.get_method(methods, teacher=copy.deepcopy(teacher), student=s, img_size=32, **options)
        if compiled:
            objective.compile_objective(backend=backend)
        torch.manual_seed(2)
        results.append(_step(objective, s, x, y, indices))
    (eager_loss, eager_terms, eager_grads), (loss, terms, grads) = results
    torch.testing.assert_close(loss, eager_loss, rtol=1e-4, atol=1e-6)
    assert terms.keys() == eager_terms.keys()
    for name in terms:
        torch.testing.assert_close(terms[name], eager_terms[name], rtol=1e-4, atol=1e-6, msg=name)
    assert grads.keys() == eager_grads.keys()
    for name in grads:  # fused kernels sum in another order: compare each gradient as a whole
        gap = (grads[name] - eager_grads[name]).norm() / eager_grads[name].norm().clamp_min(1e-12)
        assert gap < 1e-3, (name, gap.item())


def test_a_backend_that_fails_falls_back_to_eager_with_one_line():
    teacher, student = _pair()
    objective = kdzoo.get_method("kd", teacher=teacher, student=student, img_size=32)

    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here\nsecond line")

    objective.compile_objective(backend=broken)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = objective(x, y)
    assert torch.isfinite(loss)
    messages = [str(w.message) for w in caught if "compile_objective" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0] and "runs eagerly" in messages[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        objective(x, y)  # eager from then on: no second attempt, no second line
    assert not [w for w in caught if "compile_objective" in str(w.message)]


def test_a_run_with_the_compiled_objective_trains_as_the_eager_run(tmp_path):
    states = []
    for name, compiled in (("eager", "false"), ("compiled", "true")):
        sets = (f"train.compile_objective={compiled}", "train.compile_backend=aot_eager", "train.epochs=2")
        cfg = tiny_config(["kd", "at"], *sets, out_dir=str(tmp_path))
        trainer = build_trainer(cfg, registry(), tmp_path / name, show_progress=False)
        trainer.fit()
        states.append(trainer.student.state_dict())
    for key, value in states[0].items():
        if value.is_floating_point():
            torch.testing.assert_close(states[1][key], value, rtol=1e-3, atol=1e-5, msg=key)


class _CrashAtEpochEnd:
    """Fails the run as its ``epoch``-th epoch ends, before that epoch's checkpoint (outside the compiled step)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    @kdzoo.hookimpl
    def kdzoo_on_epoch_end(self, epoch):
        if epoch + 1 == self.epoch:
            raise RuntimeError("crash")


def test_a_compiled_run_on_cached_teacher_outputs_resumes_bit_exactly_and_trains_as_the_eager_run(tmp_path):
    from kdzoo.engine.state import RunState

    sets = ("teacher.cache=true", "data.augment=false", "train.epochs=3", "train.compile_backend=aot_eager")

    def cfg(compiled: str):
        return tiny_config(["kd", "at"], f"train.compile_objective={compiled}", *sets, out_dir=str(tmp_path))

    def trained(name, compiled, crash=None, resume=None):
        trainer = build_trainer(cfg(compiled), registry(), tmp_path / name, show_progress=False)
        if crash:
            trainer.pm.register(_CrashAtEpochEnd(crash))
            with pytest.raises(Exception, match="crash"):
                trainer.fit()
            return None
        trainer.fit(resume=resume)
        assert trainer.teacher_cache is not None  # the teacher's outputs came from the cache
        assert (getattr(trainer.objective, "_compiled", None) is not None) == (compiled == "true")  # no fallback
        return trainer.student.state_dict()

    whole = trained("whole", "true")
    trained("crashed", "true", crash=2)
    state = RunState.load(tmp_path / "crashed" / "last.pt")
    assert state.position.global_epoch == 1  # the crash came before epoch 2's checkpoint
    resumed = trained("crashed", "true", resume=state)
    eager = trained("eager", "false")
    for key, value in whole.items():
        assert torch.equal(resumed[key], value), key
        if value.is_floating_point():
            torch.testing.assert_close(eager[key], value, rtol=1e-3, atol=1e-5, msg=key)


def test_a_compiled_step_whose_backward_fails_is_one_line_naming_the_setting(tmp_path, monkeypatch):
    """A backward failure (CRD's, before its bank ran eagerly) comes after the forward pass compiled, so the
    eager fallback cannot catch it: the run stops in one line saying which setting to turn off."""
    backward = torch.Tensor.backward

    def failing(self, *args, **kwargs):
        raise RuntimeError("one of the variables needed for gradient computation has been modified\nmore")

    sets = ("train.compile_objective=true", "train.compile_backend=aot_eager")
    trainer = build_trainer(tiny_config(["kd"], *sets, out_dir=str(tmp_path)), registry(), tmp_path / "c")
    monkeypatch.setattr(torch.Tensor, "backward", failing)
    with pytest.raises(kdzoo.KdzooError) as caught:
        trainer.fit()
    said = str(caught.value)
    assert "\n" not in said and "backward pass of the compiled step failed" in said
    assert "RuntimeError: one of the variables" in said and "train.compile_objective=false" in said
    monkeypatch.setattr(torch.Tensor, "backward", backward)
    eager = build_trainer(tiny_config(["kd"], out_dir=str(tmp_path)), registry(), tmp_path / "e")
    monkeypatch.setattr(torch.Tensor, "backward", failing)
    with pytest.raises(RuntimeError, match="one of the variables"):  # not compiled: the error as it is
        eager.fit()
