"""`import kdzoo` as a library: the README's loop example, get_method, distill."""

import re
from pathlib import Path

import pytest
import timm
import torch

import kdzoo

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_block(marker: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README has no python block after <!-- {marker} -->"
    return match.group(1)


def test_readme_two_line_loop_runs():
    code = _readme_block("test: library-loop")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    student, distiller = namespace["student"], namespace["distiller"]
    assert isinstance(distiller, torch.nn.Module) and torch.isfinite(namespace["loss"])
    images, labels = namespace["batches"][0]
    assert set(distiller.loss(kdzoo.Batch(images, labels)).terms) == {"ce", "at"}  # what the README says
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    with pytest.warns(DeprecationWarning, match="objective.loss"):  # 0.1.0's side channel still answers
        assert set(distiller.last_terms) == {"ce", "at"}


def _models():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=10).eval(), timm.create_model(
        "test_efficientnet", num_classes=10
    )


def test_get_method_fitnets_trains_its_regressor_in_a_user_loop():
    teacher, student = _models()
    objective = kdzoo.get_method("fitnets", teacher=teacher, student=student, img_size=32, hint_weight=10)
    assert objective.methods["fitnets"].config.hint_weight == 10.0
    regressor = list(objective.parameters())
    assert regressor and not any(p is q for p in regressor for q in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    before = [p.detach().clone() for p in regressor]
    optimizer = torch.optim.SGD([*student.parameters(), *regressor], lr=0.1)
    result = objective.loss(kdzoo.Batch(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])))
    loss = result.loss
    loss.backward()
    optimizer.step()
    assert set(result.terms) == {"ce", "hint"} and result.logits.shape == (4, 10)
    expected = result.terms["ce"] + 10 * result.terms["hint"]
    assert torch.allclose(loss.detach(), expected.detach())
    assert any(not torch.equal(a, b) for a, b in zip(before, regressor, strict=True))
    assert all(teacher_param.grad is None for teacher_param in teacher.parameters())


def test_get_method_needs_a_teacher_when_the_method_does():
    _, student = _models()
    with pytest.raises(kdzoo.KdzooError, match="needs a teacher"):
        kdzoo.get_method("kd", student=student)
    byot = kdzoo.get_method("self-distill", student=student, img_size=32, variant="byot")
    assert byot.teacher is None and len(list(byot.parameters())) > 0


def test_distill_runs_the_engine_on_user_loaders(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    teacher, student = _models()
    images, labels = torch.randn(64, 3, 32, 32), torch.arange(64) % 10
    train = DataLoader(TensorDataset(images, labels), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(images[:32], labels[:32]), batch_size=32)
    summary = kdzoo.distill(
        teacher,
        student,
        train,
        val,
        methods=["kd", "rkd"],
        run_dir=tmp_path / "run",
        settings=["train.epochs=2", "optim.lr=0.01"],
        show_progress=False,
    )
    assert summary["epochs"] == 2 and summary["student"] == "test_efficientnet"
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "metrics.jsonl").is_file()
    with pytest.raises(kdzoo.KdzooError, match="need a teacher"):
        kdzoo.distill(None, student, train, val, methods=["kd"], run_dir=tmp_path / "x")
    # the run directory now holds a run: never overwritten, continued only when asked
    again = dict(methods=["kd", "rkd"], run_dir=tmp_path / "run", settings=["train.epochs=3", "optim.lr=0.01"])
    with pytest.raises(kdzoo.KdzooError, match="already holds a run"):
        kdzoo.distill(teacher, student, train, val, **again)
    assert kdzoo.distill(teacher, student, train, val, resume=True, show_progress=False, **again)["epochs"] == 3
    with pytest.raises(kdzoo.KdzooError, match=r"optim.lr \(0.01 -> 0.1\)"):
        kdzoo.distill(
            teacher, student, train, val, **{**again, "settings": ["train.epochs=3", "optim.lr=0.1"]}, resume=True
        )


def test_get_method_stacks_a_list_of_methods_like_the_engine():
    teacher, student = _models()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    stack = kdzoo.get_method(["kd", "at"], teacher=teacher, student=student, img_size=32, at={"beta": 10.0})
    result = stack.loss(kdzoo.Batch(x, y))
    assert set(result.terms) == {"ce", "kd", "at"}
    weights = result.weights
    assert weights["at"] == 10.0 and weights["ce"] == 0.1  # the first method selected sets ce, as in kdzoo run
    expected = sum(weights[name] * value for name, value in result.terms.items())
    assert torch.allclose(stack(x, y).detach(), expected.detach())
    with pytest.raises(kdzoo.KdzooError, match="not among the methods"):
        kdzoo.get_method(["kd", "at"], teacher=teacher, student=student, rkd={})


def test_models_without_parameters_or_stages_are_one_line_errors():
    from torch import nn

    teacher, student = _models()
    with pytest.raises(kdzoo.KdzooError, match=r"the student \(Identity\) has no parameters"):
        kdzoo.get_method("kd", teacher=teacher, student=nn.Identity(), img_size=32)

    class Plain(nn.Module):  # a model without timm's feature_info
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))

    with pytest.raises(kdzoo.KdzooError, match="Plain exposes no feature_info stages"):
        kdzoo.get_method("at", teacher=teacher, student=Plain(), img_size=32)


def test_the_plugin_api_is_importable_from_kdzoo_itself():
    import kdzoo.api

    for name in ("MethodInfo", "ModelInfo", "Taps", "Summary", "Outputs", "Stage", "Run", "WHOLE_RUN"):
        assert getattr(kdzoo, name) is getattr(kdzoo.api, name)
    assert kdzoo.WHOLE_RUN.name == "train" and kdzoo.WHOLE_RUN.losses is None
    assert callable(kdzoo.pair_stages) and callable(kdzoo.inner_stages) and callable(kdzoo.soft_target_kl)
