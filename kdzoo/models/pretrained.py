"""Where a model's pretrained weights come from: the local cache, or timm's download.

A timm name with a pretrained tag (``convnext_tiny.in12k_ft_in1k``), ``hf-hub:ORG/REPO`` and
``local-dir:PATH`` are all loaded the way timm loads them: timm / huggingface_hub download what is
missing, into the Hugging Face cache, with their progress bars. Offline (``HF_HUB_OFFLINE=1``) a file
that is not cached is one line naming the model and what to do, before anything is tried; a failed
download (no network, no such repository) is one line too, never a traceback or a hang.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from kdzoo.config.checks import clip
from kdzoo.errors import KdzooError, first_line

_HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# what timm looks for in a local-dir: folder, in its order (timm.models._hub._PREFERRED_FILES)
_LOCAL_DIR_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


def split_source(name: str) -> tuple[str | None, str]:
    """``("hf-hub", "timm/resnet18.a1_in1k")``, ``("local-dir", "/path")`` or ``(None, "resnet18.a1_in1k")``."""
    source, sep, rest = name.partition(":")
    source = {"hf_hub": "hf-hub"}.get(source.lower(), source.lower())
    if sep and source in ("hf-hub", "local-dir"):
        return source, rest
    return None, name


def folder_name(name: str) -> str:
    """A model name as one safe path component (``hf-hub:timm/vit_small`` -> ``timm_vit_small``): run and
    cache folders are named after models, and a source prefix must not turn into a path."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in split_source(name)[1]).strip("._")
    return safe[:100] or "model"


def hub_offline() -> bool:
    """Whether huggingface_hub may not reach the network (its constant is read when it is imported; the
    variable may have been set since)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or flag in ("1", "on", "yes", "true")


def hub_cache() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or str(constants.HF_HUB_CACHE)


def _hub_id(name: str) -> tuple[str | None, str | None, str | None]:
    """(hub repository, its weights filename if timm names one, torch hub url) for a timm name."""
    source, rest = split_source(name)
    if source == "hf-hub":
        return rest.partition("@")[0], None, None
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(rest)
    if cfg is None:
        return None, None, None
    return cfg.hf_hub_id or None, cfg.hf_hub_filename or None, cfg.url or None


def cached_pretrained_file(name: str) -> Path | None:
    """The local file holding the pretrained weights for ``name``, or None if not on this machine."""
    source, rest = split_source(name)
    if source == "local-dir":
        return next((Path(rest) / f for f in _LOCAL_DIR_FILES if (Path(rest) / f).is_file()), None)
    if source is None:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(rest)
        if cfg is not None and cfg.file and Path(cfg.file).is_file():
            return Path(cfg.file)
    hub_id, filename, url = _hub_id(name)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for candidate in (filename, *_HUB_WEIGHT_FILES):
            if candidate:
                found = try_to_load_from_cache(hub_id, candidate, cache_dir=hub_cache())
                if isinstance(found, str):
                    return Path(found)
    if url:
        local = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if local.is_file():
            return local
    return None


def check_fetchable(name: str, role: str) -> None:
    """Fail at once, in one line, when ``name``'s pretrained weights are neither on this machine nor
    allowed to be downloaded."""
    source, rest = split_source(name)
    if source == "local-dir":
        if not (Path(rest) / "config.json").is_file():
            raise KdzooError(
                f"{role} '{clip(name)}': {Path(rest) / 'config.json'} not found; a local-dir: model is a folder "
                f"holding config.json and the weights (as timm.models.save_for_hf writes it)"
            )
        return
    hub_id, _, url = _hub_id(name)
    if hub_id is None and url is None:
        raise KdzooError(
            f"timm has no pretrained weights for {role} '{clip(name)}' (timm.list_pretrained() names those "
            f"it has); set {role}.pretrained=false, or {role}.checkpoint=FILE"
        )
    if source == "hf-hub" or cached_pretrained_file(name) is None:
        if hub_offline() and not _config_cached(name):
            where = f"the Hugging Face cache ({hub_cache()}) from {hub_id}" if hub_id else f"{url}"
            raise KdzooError(
                f"pretrained weights for {role} '{clip(name)}' are not on this machine and downloads are off "
                f"(HF_HUB_OFFLINE=1): run once with network, or fill {where} (hf download {hub_id or '...'}), "
                f"or pass {role}.checkpoint=FILE"
            )


def _config_cached(name: str) -> bool:
    """An ``hf-hub:`` model offline needs its config.json and weights cached; a timm name its weights."""
    source, rest = split_source(name)
    if source != "hf-hub":
        return False
    from huggingface_hub import try_to_load_from_cache

    hub_id = rest.partition("@")[0]
    config = try_to_load_from_cache(hub_id, "config.json", cache_dir=hub_cache())
    return isinstance(config, str) and cached_pretrained_file(name) is not None


def download_failure(name: str, role: str, exc: BaseException) -> KdzooError | None:
    """One line for a download that failed (no network, no such repository, refused), else ``None``."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    network = (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)
    try:
        import urllib.error

        network = (*network, urllib.error.URLError)
    except ImportError:  # pragma: no cover - part of the standard library
        pass
    if not isinstance(exc, network):
        return None
    hub_id, _, url = _hub_id(name)
    return KdzooError(
        f"cannot download pretrained weights for {role} '{clip(name)}' from {hub_id or url}: "
        f"{type(exc).__name__}: {clip(first_line(exc), 200)}; check the network (or HF_TOKEN for a private "
        f"repository), or fill the Hugging Face cache ({hub_cache()}) on a machine that has one"
    )
