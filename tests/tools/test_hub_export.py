"""A run's student for the Hugging Face Hub (issue 34 item 1): ``kdzoo export RUN --format hf`` writes a
folder timm loads as ``local-dir:`` with the same logits and the input preparation the student was
trained with, and a model card; ``kdzoo push`` uploads it with huggingface_hub (checked by the
arguments handed to the library, never by reaching the network) and is one line offline."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from click.testing import CliRunner

import kdzoo
from kdzoo.cli import main
from kdzoo.engine import build_trainer
from kdzoo.registry import registry
from tests.helpers import tiny_config


@pytest.fixture(scope="module", params=["resnet->resnet", "resnet->vit"])
def run(request, tmp_path_factory):
    """A finished tiny run (a CNN student, a ViT student) and the input its student was trained on."""
    tmp_path = tmp_path_factory.mktemp("hub")
    cfg = tiny_config(["kd"], "train.epochs=1", pair=request.param, out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    trainer.fit()
    return tmp_path / "run", trainer.data.inputs.student


def test_the_hub_folder_loads_in_timm_with_the_students_logits_and_input(run):
    run_dir, trained_on = run
    result = CliRunner().invoke(main, ["export", str(run_dir), "--format", "hf"])
    assert result.exit_code == 0, result.output
    folder = run_dir / "hf"
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    student = kdzoo.load_student(run_dir / "student.safetensors").eval()
    x = torch.randn(4, 3, trained_on.size, trained_on.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), student(x), rtol=1e-6, atol=1e-6)
    cfg = loaded.pretrained_cfg
    assert tuple(cfg["mean"]) == pytest.approx(trained_on.mean) and tuple(cfg["std"]) == pytest.approx(trained_on.std)
    assert tuple(cfg["input_size"]) == (3, trained_on.size, trained_on.size)
    assert cfg["interpolation"] == trained_on.interpolation and cfg["crop_pct"] == trained_on.crop_pct
    card = (folder / "README.md").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "knowledge-distillation" in card and "**Method(s)**: kd" in card
    assert f"**Top-1**: {summary['student_top1']}" in card and "licence" in card


def test_push_uploads_the_folder_and_is_one_line_offline(run, monkeypatch):
    run_dir, _ = run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = CliRunner().invoke(main, ["push", str(run_dir), "someone/distilled"])
    assert offline.exit_code == 1 and len(offline.output.strip().splitlines()) == 1
    assert "HF_HUB_OFFLINE is set" in offline.output

    calls = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)) or "url"
    )

    def upload_folder(self, **kw):
        calls.append(("upload", kw["repo_id"], sorted(p.name for p in Path(kw["folder_path"]).iterdir())))

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    online = CliRunner().invoke(main, ["push", str(run_dir), "someone/distilled", "--private"])
    assert online.exit_code == 0, online.output
    assert calls[0] == ("create", "someone/distilled", {"private": True, "exist_ok": True})
    assert calls[1] == ("upload", "someone/distilled", ["README.md", "config.json", "model.safetensors"])
