"""A run's student as a Hugging Face model folder, and its upload.

``kdzoo export RUN --format hf`` writes ``RUN/hf/``: the weights (``model.safetensors``) and
``config.json`` through timm's own ``save_for_hf`` (the architecture, its arguments and the
``pretrained_cfg`` carrying the input the student was trained on: mean, std, size, interpolation,
crop), so ``timm.create_model("local-dir:RUN/hf", pretrained=True)`` rebuilds it; and a
``README.md`` model card. ``kdzoo push RUN REPO_ID`` uploads that folder with huggingface_hub.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kdzoo.errors import KdzooError

HF_FOLDER = "hf"


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise KdzooError(f"{path} is missing or damaged: {what}") from None


def write_hf_folder(run_dir: Path) -> Path:
    """``run_dir/hf``: the student as timm saves a model for the Hub, plus its model card."""
    import timm
    from safetensors.torch import load_file
    from timm.models import save_for_hf

    student = _read(run_dir / "student.json", "the run has not finished (resume it first)")
    summary = _read(run_dir / "summary.json", "the run has not finished (resume it first)")
    if student.get("deployed_by"):
        raise KdzooError(
            f"{run_dir}: what {student['deployed_by']} deploys is the student plus modules of its own, not a timm "
            f"model; --format hf exports timm students (use --format onnx, or kdzoo.load_student)"
        )
    inputs = student.get("input")
    if not inputs:
        raise KdzooError(f"{run_dir}/student.json does not say how the student's inputs were made: run it again")
    model = timm.create_model(student["model"], pretrained=False, **student["kwargs"])
    model.load_state_dict(load_file(str(run_dir / "student.safetensors")))
    in_chans = int(student["kwargs"].get("in_chans", 3))
    data_config = {
        "mean": tuple(inputs["mean"]),
        "std": tuple(inputs["std"]),
        "input_size": (in_chans, int(inputs["size"]), int(inputs["size"])),
        "interpolation": inputs["interpolation"],
        "crop_pct": float(inputs["crop_pct"]),
    }
    folder = run_dir / HF_FOLDER
    # written beside, then put in place: a kill leaves the earlier folder or none, never half of one
    staging = Path(tempfile.mkdtemp(prefix=".hf-", dir=run_dir))
    try:
        save_for_hf(model, str(staging), safe_serialization=True, data_config=data_config)
        (staging / "README.md").write_text(model_card(run_dir, student, summary, data_config))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def model_card(run_dir: Path, student: dict[str, Any], summary: dict[str, Any], data_config: dict[str, Any]) -> str:
    """The model card: what was distilled from what, how, on what data, how well, and how to load it."""
    config = _read(run_dir / "config.json", "the run's config")
    methods = ", ".join(summary.get("methods") or []) or "none (trained from scratch)"
    method_configs = json.dumps(config.get("method_configs", {}), indent=2)
    deploy = summary.get("deploy") or {}
    rows = [f"| {name} | {value} |" for name, value in sorted(deploy.items()) if isinstance(value, int | float | str)]
    top1 = summary.get("student_top1")
    lines = [
        "---",
        "library_name: timm",
        "tags: [image-classification, timm, knowledge-distillation, kdzoo]",
        "license: other  # the licence of the training data applies: fill it in",
        "---",
        f"# {student['model']} distilled with kdzoo ({methods})",
        "",
        f"- **Student**: `{student['model']}` ({summary.get('deployed', {}).get('params', '?')} parameters)",
        f"- **Teacher**: `{summary.get('teacher')}` (top-1 {summary.get('teacher_top1')})",
        f"- **Method(s)**: {methods}",
        f"- **Data**: `{summary.get('data')}`; the data's licence: _fill in_",
        f"- **Top-1**: {top1} (seed {config.get('train', {}).get('seed')}; best epoch "
        f"{summary.get('student_best_top1')} at epoch {summary.get('student_best_epoch')})",
        f"- **Input**: {data_config['input_size']}, mean {list(data_config['mean'])}, std {list(data_config['std'])}, "
        f"{data_config['interpolation']}, crop {data_config['crop_pct']}",
        "",
        "```python",
        "import timm",
        f'model = timm.create_model("hf-hub:REPO_ID", pretrained=True)  # or "local-dir:{HF_FOLDER}"',
        "```",
        "",
        "## Method settings",
        "",
        "```json",
        method_configs,
        "```",
        "",
        "## Reproduce",
        "",
        f"`kdzoo run --config config.json` with this run's config ({run_dir.name}/config.json, also below).",
        "",
    ]
    if rows:
        lines += ["## Deployed", "", "| what | value |", "|---|---|", *rows, ""]
    lines += ["## Config", "", "```json", json.dumps(config, indent=2), "```", ""]
    return "\n".join(lines)


def push(run_dir: Path, repo_id: str, private: bool = False) -> str:
    """Upload ``run_dir/hf`` (written first if missing) to the Hub repository ``repo_id``; its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise KdzooError(
            f"kdzoo push: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it (and log in with `hf auth "
            f"login`) to push {run_dir / HF_FOLDER} to {repo_id}"
        )
    folder = run_dir / HF_FOLDER
    if not (folder / "config.json").is_file():
        folder = write_hf_folder(run_dir)
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=f"kdzoo: {run_dir.name}")
    except Exception as exc:  # the Hub's errors: not logged in, no rights, no network
        raise KdzooError(f"kdzoo push {repo_id}: the upload failed ({type(exc).__name__}: {str(exc)[:200]})") from None
    return str(url)
