"""What the command line says when it is given something wrong is one line, and true: ``--nproc 0``,
a method name in the wrong case, ``kdzoo eval`` of a run folder or of a damaged or foreign student
(safetensors or ONNX), of a run trained on the user's own DataLoaders, ``kdzoo export`` of a folder
that does not exist."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner, Result
from safetensors.torch import save_file

from kdzoo.cli import main
from tests.helpers import TINY


def _sets(*pairs: str) -> list[str]:
    return [a for s in pairs for a in ("--set", s)]


TINY_RUN = _sets(*TINY, "teacher.model=test_resnet", "student.model=test_resnet", "train.epochs=1")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny run, trained once for the module; tests that damage its files work on a copy
    (:func:`copy_run`)."""
    return train_finished_run(tmp_path_factory.mktemp("finished"))


def train_finished_run(root: Path) -> Path:
    """A finished tiny run (KD, synthetic data, one epoch) in ``root``, with its own teacher cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KDZOO_CACHE", str(root / "cache"))  # module fixtures precede conftest's own cache
        ran = invoke("run", "--method", "kd", "--quiet", *TINY_RUN, "--set", f"train.out_dir={root}")
    assert ran.exit_code == 0, ran.output
    return root / "kd-test_resnet-seed0"


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of ``run_dir`` this test may damage."""
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(result: Result, *needles: str) -> str:
    """The single ``Error:`` line a failed command printed (no traceback), holding every needle."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def top1(result: Result) -> str:
    """The ``top1=..`` word of what ``kdzoo eval`` printed."""
    assert result.exit_code == 0, result.output
    return next(word for word in result.output.split() if word.startswith("top1="))


@pytest.mark.parametrize("nproc", ["0", "-1"])
def test_nproc_below_one_is_one_line(nproc, tmp_path):
    result = invoke("run", "--method", "kd", "--nproc", nproc, *TINY_RUN, "--set", f"train.out_dir={tmp_path}")
    one_line(result, f"--nproc {nproc}", "1 or more")
    assert not any(tmp_path.iterdir())  # nothing was trained


@pytest.mark.parametrize(
    "command",
    [["run", "--method", "KD", "--set"], ["compare", "--methods", "Kd,at", "--set"], ["show", "KD"]],
)
def test_a_method_name_in_the_wrong_case_gets_the_right_one_suggested(command, tmp_path):
    wrong = "KD" if "KD" in command else "Kd"
    args = [*command, f"train.out_dir={tmp_path}"] if command[-1] == "--set" else command
    one_line(invoke(*args), f"unknown method '{wrong}'", "did you mean 'kd'")


def test_eval_of_a_run_folder_scores_its_exported_student(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    result = invoke("eval", finished_run)
    assert top1(result) == f"top1={summary['student_top1']:.2f}"
    assert f"scored {finished_run / 'student.safetensors'}" in result.output  # says which file it scored


def test_eval_of_an_unfinished_run_folder_scores_its_last_checkpoint(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    (run_dir / "student.safetensors").unlink()
    result = invoke("eval", run_dir)
    assert top1(result) == top1(invoke("eval", finished_run)) and f"scored {run_dir / 'last.pt'}" in result.output


def test_eval_of_a_folder_without_a_student_says_which_files_it_looks_for(tmp_path):
    one_line(invoke("eval", tmp_path), str(tmp_path), "holds no student.safetensors or last.pt")


def test_eval_of_a_path_that_does_not_exist_says_so(tmp_path):
    one_line(invoke("eval", tmp_path / "nope"), f"{tmp_path / 'nope'} does not exist")


@pytest.mark.parametrize("fmt", ["safetensors", "onnx"])
def test_export_of_a_folder_that_does_not_exist_says_so_not_resume_it(fmt, tmp_path):
    missing = tmp_path / "nope"
    line = one_line(invoke("export", missing, "--format", fmt), f"run folder {missing} does not exist")
    assert "resume" not in line


def test_export_of_a_folder_that_is_not_a_run_says_so(tmp_path):
    one_line(invoke("export", tmp_path), "is not a kdzoo run folder", "neither last.pt nor config.json")


def _truncated(path: Path) -> bytes:
    return path.read_bytes()[: path.stat().st_size // 2]


SAFETENSORS_DAMAGE = {
    "empty": lambda path: b"",
    "not safetensors": lambda path: b"\x00" * 64,
    "truncated": _truncated,
    "header lies about its length": lambda path: b"\xff" * 8 + path.read_bytes()[8:],
}


@pytest.mark.parametrize("damage", SAFETENSORS_DAMAGE)
def test_eval_of_a_damaged_student_safetensors_is_one_line_from_the_checked_loader(finished_run, tmp_path, damage):
    run_dir = copy_run(finished_run, tmp_path)
    student = run_dir / "student.safetensors"
    student.write_bytes(SAFETENSORS_DAMAGE[damage](student))
    one_line(invoke("eval", student), f"safetensors file {student} cannot be read")


def test_eval_of_another_models_safetensors_names_the_mismatch_in_one_line(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    foreign = timm.create_model("resnet10t", num_classes=10).state_dict()
    save_file({k: v.contiguous() for k, v in foreign.items()}, str(run_dir / "student.safetensors"))
    one_line(
        invoke("eval", run_dir / "student.safetensors"),
        "does not hold this run's student (test_resnet)",
        "missing",
        "of another shape",
    )


def test_eval_with_a_damaged_config_json_beside_the_student_is_one_line(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    (run_dir / "config.json").write_text('{"student": ')
    one_line(invoke("eval", run_dir / "student.safetensors"), f"{run_dir / 'config.json'} is damaged (not JSON")


@pytest.fixture(scope="module")
def onnx_run(finished_run, tmp_path_factory) -> Path:
    """The finished run, copied, with its student exported to ONNX (and verified)."""
    return exported_to_onnx(finished_run, tmp_path_factory.mktemp("onnx"))


def exported_to_onnx(run_dir: Path, where: Path) -> Path:
    """A copy of ``run_dir`` in ``where``, its student exported to ONNX (and verified)."""
    from kdzoo.tools.deploy import export_onnx

    copied = copy_run(run_dir, where)
    export_onnx(copied)
    return copied


def _foreign_onnx(path: Path) -> bytes:
    """A valid ONNX model of another shape: 5 features in, 10 logits out."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(torch.zeros(5, 10).numpy(), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


ONNX_DAMAGE = {
    "empty": (lambda path: b"", "cannot be loaded by onnxruntime"),
    "not onnx": (lambda path: b"this is not a protobuf" * 8, "cannot be loaded by onnxruntime"),
    "truncated": (_truncated, "cannot be loaded by onnxruntime"),
    "another model": (_foreign_onnx, "is not this run's student: it takes [N, 5], the run's data needs [N, 3, 32, 32]"),
}


@pytest.mark.parametrize("damage", ONNX_DAMAGE)
def test_eval_of_a_damaged_or_foreign_onnx_file_is_one_line(onnx_run, tmp_path, damage):
    run_dir = copy_run(onnx_run, tmp_path)
    target = run_dir / "student.onnx"
    make, said = ONNX_DAMAGE[damage]
    target.write_bytes(make(target))
    one_line(invoke("eval", target), str(target), said)


def test_eval_of_the_exported_onnx_file_scores_it(onnx_run):
    assert top1(invoke("eval", onnx_run / "student.onnx")) == top1(invoke("eval", onnx_run))


@pytest.fixture
def custom_data_run(tmp_path) -> Path:
    """A run trained by ``kdzoo.distill`` on the user's own DataLoaders (random images, 10 classes)."""
    import kdzoo

    torch.manual_seed(0)
    images, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=16)
    teacher, student = (timm.create_model("test_resnet", num_classes=10) for _ in range(2))
    run_dir = tmp_path / "custom"
    kdzoo.distill(teacher, student, loader, loader, ["kd"], run_dir=run_dir, settings=["train.epochs=1"])
    return run_dir


def test_eval_of_a_run_trained_on_the_users_own_loaders_says_how_to_score_it(custom_data_run):
    for scored in (custom_data_run, custom_data_run / "last.pt"):
        one_line(
            invoke("eval", scored),
            "this run's data came from your own DataLoaders",
            "kdzoo.load_student(",
            "--set data.name=",
        )
    # the way out it names: data kdzoo can load, of the same shape
    assert top1(invoke("eval", custom_data_run, "--set", "data.name=synthetic")).startswith("top1=")


def test_resume_of_a_finished_run_whose_summary_was_emptied_says_finished_without_a_traceback(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    (run_dir / "summary.json").write_text("")  # what an interrupted in-place write used to leave
    resumed = invoke("run", "--resume", run_dir)
    assert resumed.exit_code == 0 and "Traceback" not in resumed.output, resumed.output
    assert "is finished (its summary.json cannot be read" in resumed.output
    assert f"kdzoo eval {run_dir} scores its student" in resumed.output
