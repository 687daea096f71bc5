"""Fixtures the engine's tests share."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.helpers import VIT, VIT_KWARGS


@pytest.fixture
def vit_in_hub_cache(tmp_path, monkeypatch):
    """The ViT's "pretrained" weights (a tiny variant's, random) where timm looks for them offline."""
    hub = tmp_path / "hf"
    entry = hub / f"models--timm--{VIT}"
    snapshot = entry / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("abc")
    torch.manual_seed(0)
    model = timm.create_model(VIT, num_classes=4, **VIT_KWARGS)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    return model
