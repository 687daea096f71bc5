"""Pretrained teachers as a timm user brings them: a tagged timm name, hf-hub:, local-dir:; read from the
Hugging Face cache (laid out here), downloaded by timm when missing (checked by the call it makes, never by
reaching the network), and one line offline or when the download fails."""

import time

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from kdzoo.cli import main
from kdzoo.config import TeacherConfig
from kdzoo.errors import KdzooError
from kdzoo.models import cached_pretrained_file, create_model, folder_name
from tests.helpers import TINY

REPO = "timm/test_resnet.r160_in1k"  # where timm's pretrained_cfg says test_resnet's weights live


def _sets(*pairs):
    return [a for s in pairs for a in ("--set", s)]


def _lay_out(hub, repo, files):
    """``files`` (name -> writer) under the Hugging Face cache layout for ``repo``; the weights path."""
    entry = hub / f"models--{repo.replace('/', '--')}"
    snapshot = entry / "snapshots" / "abc123"
    snapshot.mkdir(parents=True, exist_ok=True)
    (entry / "refs").mkdir(exist_ok=True)
    (entry / "refs" / "main").write_text("abc123")
    for name, write in files.items():
        write(snapshot / name)
    return snapshot


def _weights(model):
    return lambda path: save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    folder = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return folder


@pytest.fixture
def reference():
    torch.manual_seed(0)
    return timm.create_model("test_resnet")


def test_cached_weights_load_without_training(tmp_path, hub, reference):
    snapshot = _lay_out(hub, REPO, {"model.safetensors": _weights(reference)})
    assert cached_pretrained_file("test_resnet.r160_in1k") == snapshot / "model.safetensors"
    model = create_model(TeacherConfig(model="test_resnet", pretrained=True), "teacher", 10, 3)
    assert torch.equal(model.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)  # body from the file
    assert model.num_classes == 10  # head re-sized for the data

    settings = [*TINY, "student.model=test_resnet", f"train.out_dir={tmp_path / 'runs'}", "train.epochs=1"]
    teacher = ["teacher.model=test_resnet.r160_in1k", "teacher.pretrained=true", "teacher.train.epochs=0"]
    ran = CliRunner().invoke(main, ["run", "--method", "kd", "--quiet", *_sets(*settings, *teacher)])
    assert ran.exit_code == 0, ran.output
    assert "teacher: training" not in ran.output and "teacher test_resnet.r160_in1k: top-1" in ran.output


def test_missing_offline_is_one_line(tmp_path, hub):
    started = time.perf_counter()
    settings = [*TINY, "student.model=test_resnet", f"train.out_dir={tmp_path}"]
    teacher = ["teacher.model=resnet18.a1_in1k", "teacher.pretrained=true"]
    result = CliRunner().invoke(main, ["run", "--method", "kd", *_sets(*settings, *teacher)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in ("teacher 'resnet18.a1_in1k'", "HF_HUB_OFFLINE=1", str(hub), "hf download timm/resnet18.a1_in1k"):
        assert needle in lines[0], lines[0]
    assert time.perf_counter() - started < 30  # never waits on a network


def _online(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_missing_online_downloads_through_timm(hub, reference, monkeypatch):
    """With network allowed, timm's own download is what runs: the call it makes to huggingface_hub is
    recorded here (and answered from a file made here), then the weights are found in the cache."""
    import timm.models._hub as timm_hub

    _online(monkeypatch)
    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(_lay_out(hub, repo_id, {filename: _weights(reference)}) / filename)

    monkeypatch.setattr(timm_hub, "hf_hub_download", download)
    model = create_model(TeacherConfig(model="test_resnet.r160_in1k", pretrained=True), "teacher", 10, 3)
    assert calls == [(REPO, "model.safetensors")]
    assert torch.equal(model.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert cached_pretrained_file("test_resnet.r160_in1k") is not None  # the teacher's identity is its file


def test_failed_download_is_one_line(hub, monkeypatch):
    import timm.models._hub as timm_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    _online(monkeypatch)

    def unreachable(repo_id, filename, **kwargs):
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub.\nmore")

    monkeypatch.setattr(timm_hub, "hf_hub_download", unreachable)
    with pytest.raises(KdzooError, match=f"cannot download pretrained weights for teacher 'test_resnet' from {REPO}"):
        create_model(TeacherConfig(model="test_resnet", pretrained=True), "teacher", 10, 3)


def test_local_dir_and_hf_hub_names(tmp_path, hub, reference):
    from timm.models import save_for_hf

    folder = tmp_path / "exported"
    save_for_hf(reference, str(folder), safe_serialization=True)
    name = f"local-dir:{folder}"
    assert cached_pretrained_file(name) == folder / "model.safetensors"
    model = create_model(TeacherConfig(model=name, pretrained=True), "teacher", 1000, 3)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model.eval()(x), reference.eval()(x), atol=1e-6)

    # the same folder's files under the hub cache answer an hf-hub: name offline
    files = {p.name: (lambda dest, src=p: dest.write_bytes(src.read_bytes())) for p in folder.iterdir()}
    _lay_out(hub, "someone/tiny-resnet", files)
    model = create_model(TeacherConfig(model="hf-hub:someone/tiny-resnet", pretrained=True), "teacher", 1000, 3)
    assert torch.allclose(model.eval()(x), reference.eval()(x), atol=1e-6)
    assert folder_name("hf-hub:someone/tiny-resnet") == "someone_tiny-resnet"
    assert "/" not in folder_name(name) and not folder_name(name).startswith(".")

    with pytest.raises(KdzooError, match="config.json not found"):
        create_model(TeacherConfig(model=f"local-dir:{tmp_path / 'nothing'}", pretrained=True), "teacher", 10, 3)
    with pytest.raises(KdzooError, match="are not on this machine and downloads are off"):
        create_model(TeacherConfig(model="hf-hub:someone/absent", pretrained=True), "teacher", 10, 3)
