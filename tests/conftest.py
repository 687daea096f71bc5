import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

# tiny models gain nothing from two threads, and lose a lot when the two cores are busy
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own teacher cache and a freshly loaded plugin registry."""
    from kdzoo.registry import reset_registry

    monkeypatch.setenv("KDZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reset_registry()
    yield
    reset_registry()
