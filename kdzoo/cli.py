"""The ``kdzoo`` command line: run, list, show, eval, export, push, plot, compare, bench, plugins.

Only click is imported up front: each command imports what it uses (torch, the engine) and loads the
plugins (:func:`registry`) when it runs, so ``kdzoo --help`` and ``kdzoo --version`` answer at once
whatever the installed plugins do at import.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from kdzoo.config import RunConfig
    from kdzoo.engine.resume import ResumeTarget
    from kdzoo.registry import Registry


def registry() -> Registry:
    """The process-wide plugin registry: the plugins load on the first call, by a command that needs them."""
    from kdzoo.registry import registry as loaded

    return loaded()


def one_line_errors(fn):
    """A :class:`KdzooError` becomes ``Error: <message>`` and exit code 1, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from kdzoo.errors import KdzooError

        try:
            return fn(*args, **kwargs)
        except KdzooError as exc:
            if os.environ.get("KDZOO_DEBUG"):  # the full traceback, for plugin authors
                raise
            raise click.ClickException(str(exc)) from None

    return wrapper


def which_student(help_text: str):
    """The ``--which last|best|ema`` option of the commands that read a run's kept student."""
    return click.option(
        "--which", type=click.Choice(["last", "best", "ema"]), default="last", show_default=True, help=help_text
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kdzoo")
def main() -> None:
    """kdzoo: knowledge distillation for any timm teacher/student pair, one plugin per method."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # per-epoch lines show up even when piped to a file


def default_run_dir(config: RunConfig) -> Path:
    from kdzoo.models.pretrained import folder_name

    student = folder_name(config.student.model)  # an hf-hub:/local-dir: name is no folder name
    name = config.train.name or f"{'+'.join(config.methods)}-{student}-seed{config.train.seed}"
    return Path(config.train.out_dir) / name


@main.command()
@click.option("--method", "-m", "methods", multiple=True, help="Method to apply; repeat to stack methods.")
@click.option("--config", "-c", "configs", multiple=True, help="YAML config file(s), merged in order.")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@click.option(
    "--resume",
    is_flag=False,
    flag_value="auto",
    default=None,
    metavar="[auto|RUN_DIR]",
    help="Continue from the last checkpoint: of the latest run with this config (auto) or of RUN_DIR.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-epoch lines.")
@click.option(
    "--nproc", default=1, show_default=True, help="Processes (torchrun); data.batch_size is the global batch."
)
@click.option("--nnodes", default=1, show_default=True, help="Machines, each running this command with --nproc.")
@click.option("--node-rank", default=0, show_default=True, help="This machine's place among --nnodes (0 first).")
@click.option("--rdzv-endpoint", default=None, metavar="HOST:PORT", help="Where the --nnodes machines meet.")
@click.option(
    "--max-restarts", default=0, show_default=True, help="Restart the workers after a failure; each resumes the run."
)
@one_line_errors
def run(methods, configs, overrides, resume, quiet, nproc, nnodes, node_rank, rdzv_endpoint, max_restarts) -> None:
    """Distill a teacher into a student with one or more methods."""
    from kdzoo.config import load_config
    from kdzoo.engine import build_trainer
    from kdzoo.engine.distributed import any_across, init_from_env, process_group_left_at_exit
    from kdzoo.engine.locking import check_writable
    from kdzoo.engine.resume import from_main_process
    from kdzoo.errors import KdzooError

    if nproc < 1:
        raise KdzooError(f"--nproc {nproc}: the number of processes to train with is 1 or more")
    if nnodes < 1 or not 0 <= node_rank < nnodes:
        raise KdzooError(f"--nnodes {nnodes} --node-rank {node_rank}: give 1 or more nodes and a rank in 0..nnodes-1")
    if nnodes > 1 and rdzv_endpoint is None:
        raise KdzooError(f"--nnodes {nnodes}: say where the nodes meet with --rdzv-endpoint HOST:PORT (one node's)")
    if max_restarts < 0:
        raise KdzooError(f"--max-restarts {max_restarts}: 0 or more")
    from kdzoo.engine.launch import Launch, run_under_torchrun

    launch = Launch(nproc, nnodes, node_rank, rdzv_endpoint, max_restarts)
    if launch.needed and "WORLD_SIZE" not in os.environ:
        raise SystemExit(run_under_torchrun(launch, sys.argv[1:]))

    reg = registry()
    _refuse_miscased_methods(methods, reg)
    with process_group_left_at_exit():
        processes = init_from_env()  # under torchrun: the group first, for what the main process reads
        # torchrun restarted the workers after a failure (only the failed node's agent counts it: the
        # others restart theirs to re-form the group): every process goes on from the last checkpoint
        restarted = any_across(int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0, processes)
        target = None
        if resume or restarted:
            find = functools.partial(
                _resume_target, resume or "auto", list(configs), list(overrides), list(methods), reg
            )
            target = from_main_process(_or_none(find) if restarted and not resume else find, processes, reg)
        if target is not None and target.finished:
            if processes.main:
                click.echo(
                    f"{target.run_dir} is finished ({_finished_how(target.run_dir)}): nothing to resume; to train "
                    f"it longer, add --set train.epochs=N with N > {target.config.train.epochs}"
                )
            return
        if target is not None:
            config, run_dir, state = target.config, target.run_dir, target.state
            if not quiet and processes.main:
                for note in target.notes:
                    click.echo(note, err=True)
        else:
            config = load_config(list(configs), list(overrides), list(methods), reg.config_classes(), reg.failures)
            run_dir, state = default_run_dir(config), None
            if processes.main:
                check_writable(run_dir.parent)  # before a teacher is trained for minutes
        trainer = build_trainer(config, reg, run_dir, show_progress=False if quiet else None)
        if state is None:
            trainer.claim_new_run_dir()
        summary = trainer.fit(resume=state)
    if not trainer.dist.main:  # under torchrun, only rank 0 speaks
        return
    teacher = "no external teacher"
    if summary["teacher"] is not None:
        teacher = f"teacher {summary['teacher']}: top-1 {summary['teacher_top1']:.2f}%"
    click.echo(
        f"{teacher} | student {summary['student']}: "
        f"top-1 {summary['student_top1']:.2f}% (best {summary['student_best_top1']:.2f}%) | "
        f"{summary['wall_time_s']:.0f} s | run dir: {summary['run_dir']}"
    )


def _finished_how(run_dir: Path) -> str:
    """Epochs and student top-1 from a finished run's ``summary.json``, or that it cannot be read."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        return f"{summary['epochs']} epochs, student top-1 {summary['student_top1']:.2f}%"
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
        return f"its summary.json cannot be read ({type(exc).__name__}); kdzoo eval {run_dir} scores its student"


def _refuse_miscased_methods(methods: tuple[str, ...], reg: Registry) -> None:
    """``--method KD``: method names are matched exactly, so name the one meant (``kd``). A name two
    distributions register is refused here, naming both, before any ``--set`` for it is read."""
    from kdzoo.errors import KdzooError

    for name in methods:
        if reg.find(name) is not None or name in reg.failures:  # find raises for a name two distributions register
            continue
        meant = [known for known in reg.methods if known.lower() == name.lower()]
        if meant:
            raise KdzooError(f"unknown method '{name}' (did you mean '{meant[0]}'? method names are case-sensitive)")


def _or_none(find):
    """``find`` for a restarted worker: ``None`` (start afresh) when the failure came before any checkpoint."""

    def found_or_none():
        from kdzoo.engine.resume import NothingToResume

        try:
            return find()
        except NothingToResume:  # a damaged checkpoint, or a changed config, is still an error
            return None

    return found_or_none


def _resume_target(resume: str, configs: list[str], overrides: list[str], methods: list[str], reg) -> ResumeTarget:
    from kdzoo.config import load_config
    from kdzoo.engine.resume import resume_given, resume_latest

    if resume != "auto":
        return resume_given(Path(resume), configs, overrides, methods, reg)
    wanted = load_config(configs, overrides, methods, reg.config_classes(), reg.failures)
    return resume_latest(default_run_dir(wanted), wanted, reg)


@main.command("list")
@click.option("--datasets", is_flag=True, help="The datasets data.name selects: built in, and from plugins.")
@click.option("--loggers", is_flag=True, help="The experiment trackers train.loggers selects, and their plugins.")
def list_cmd(datasets: bool, loggers: bool) -> None:
    """Installed methods, their papers and the plugins they come from.

    A method name that two distributions register is listed once per distribution, as DISTRIBUTION:METHOD
    (kdzoo:kd), with a [clash] line naming both: select one by that name."""
    from kdzoo.api import KINDS

    reg = registry()
    if datasets:
        _list_datasets(reg)
        return
    if loggers:
        from kdzoo.reporting.reporters import CORE_LOGGERS

        for name, info in sorted({**reg.loggers, **CORE_LOGGERS}.items()):
            source = f"{info.plugin} ({info.distribution} {info.version})".replace(" ( )", "")
            install = f" [pip install 'kdzoo[{info.extra}]']" if info.extra else ""
            click.echo(f"{name:<14} {info.summary}{install}\n{'':<14} plugin: {source}")
        return
    for kind in KINDS:
        methods = sorted((name, info) for name, info in reg.methods.items() if info.kind == kind)
        if methods:
            click.echo(f"== {kind} methods ==")
        for name, info in methods:
            source = f"{info.plugin} ({info.distribution} {info.version})".replace(" ( )", "")
            click.echo(f"{name:<14} {info.summary}\n{'':<14} paper: {info.paper}\n{'':<14} plugin: {source}")
    for line in reg.clash_lines():
        click.echo(f"{'[clash]':<14} {line}")
    for plugin, error in sorted(reg.failures.items()):
        click.echo(f"{'[failed]':<14} plugin '{plugin}' did not load: {error}")


def _list_datasets(reg: Registry) -> None:
    from kdzoo.data import DATASETS
    from kdzoo.data.datasets import READER_SUMMARIES, SUMMARIES

    click.echo("== built-in datasets ==")
    for name in DATASETS:
        click.echo(f"{name:<14} {SUMMARIES.get(name, '')}".rstrip())
    click.echo("== dataset readers (data.name) ==")
    for name, summary in READER_SUMMARIES.items():
        click.echo(f"{name:<14} {summary}")
    if reg.datasets:
        click.echo("== datasets from plugins ==")
    for name, info in sorted(reg.datasets.items()):
        source = f"{info.plugin} ({info.distribution} {info.version})".replace(" ( )", "")
        shadowed = " [shadowed by the built-in dataset of this name]" if name in DATASETS else ""
        click.echo(f"{name:<14} {info.summary}{shadowed}\n{'':<14} plugin: {source}")


@main.command()
@click.argument("method", required=False, metavar="[METHOD|SECTION|FILE]")
@click.option(
    "--config", "whole", is_flag=True, help="The run config's own sections, every key with its default and its help."
)
@one_line_errors
def show(method: str | None, whole: bool) -> None:
    """A method's config with its defaults (YAML, ready to paste under its name in a config file); a
    config FILE's recipe (what it reproduces and its source) and settings.

    With --config, the run config's own sections (teacher, student, data, optim, train) first, every key
    with its default and one line of help; a section's name (kdzoo show train) prints that section."""
    import yaml

    from kdzoo.config import as_dict
    from kdzoo.config.schema import CORE_SECTIONS, config_yaml

    if method in CORE_SECTIONS or (whole and method is None):
        click.echo(config_yaml(None if whole else method))
        return
    if method is not None and (method.endswith((".yaml", ".yml")) or Path(method).is_file()):
        _show_recipe(Path(method))
        return
    if method is None:
        raise click.UsageError("name a METHOD (kdzoo list shows them), a section (train, data, ...) or pass --config")
    if whole:
        click.echo(config_yaml(methods=[method]) + "\n")
    reg = registry()
    _refuse_miscased_methods((method,), reg)
    info = reg.get(method)
    click.echo(f"# {info.name}: {info.summary}\n# paper: {info.paper}")
    defaults = as_dict(info.config_class()) if dataclasses.is_dataclass(info.config_class) else {}
    click.echo(yaml.safe_dump({info.name: defaults}, sort_keys=False).rstrip())


def _show_recipe(path: Path) -> None:
    """A config file's recipe (what it reproduces and its source), then its settings."""
    import yaml

    from kdzoo.config import read_yaml

    data = read_yaml(path)
    click.echo(f"# recipe: {data.get('recipe') or 'not given (a recipe config names its source under recipe:)'}")
    click.echo(yaml.safe_dump({k: v for k, v in data.items() if k != "recipe"}, sort_keys=False).rstrip())


@main.command("eval")
@click.argument("checkpoint_path", metavar="CHECKPOINT")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE", help="Override data.* keys.")
@which_student(
    "For a run folder: the last student, the best validation epoch's (student_best.safetensors) or the "
    "EMA's (student_ema.safetensors, train.ema)."
)
@one_line_errors
def eval_cmd(checkpoint_path: str, overrides, which: str) -> None:
    """Accuracy of a run's deployed student on its validation data.

    CHECKPOINT: a run folder (its student.safetensors, or its last.pt before the run has finished), a
    run's last.pt, or its exported student.safetensors or student.onnx (run by onnxruntime; read with
    the run's config.json beside it). What a method deploys around the student (SimKD's projector and
    reused teacher classifier) is scored with it.
    """
    from kdzoo.data import load_data
    from kdzoo.engine import pick_device
    from kdzoo.engine.evaluate import evaluate

    path = _scored_file(Path(checkpoint_path), which)
    onnx = path.suffix == ".onnx"
    raw, weights, modules = (_read_config_beside(path), None, None) if onnx else _read_student(path)
    config = _eval_config(path, raw, overrides)
    data = load_data(config.data, config.train.seed)
    if onnx:
        from kdzoo.tools.deploy import OnnxStudent

        model, device = OnnxStudent(path), pick_device("cpu")  # onnxruntime runs on the CPU
        model.check_fits(tuple(next(iter(data.val.epoch(0)))[0].shape[1:]), data.num_classes)
    else:
        model = _deployed_with_weights(config, data.num_classes, data.in_chans, path, weights, modules)
        device = pick_device(config.train.device)
    scores = evaluate(model.to(device), data.val.to(device).epoch(0), data.num_classes, f"student ({path.name})")
    if path != Path(checkpoint_path):  # a run folder: which of its files was scored
        click.echo(f"scored {path}", err=True)
    click.echo(" ".join(f"{k}={v:.2f}" if k != "loss" else f"{k}={v:.4f}" for k, v in scores.items()))


#: what ``kdzoo eval RUN_DIR`` scores, first found first
RUN_DIR_STUDENTS = ("student.safetensors", "last.pt")


def _scored_file(path: Path, which: str = "last") -> Path:
    """The file ``kdzoo eval`` scores for what it was given: the file itself, or a run folder's student
    (``which``: the last, the best epoch's, the EMA's)."""
    from kdzoo.engine.export import kept_student
    from kdzoo.errors import KdzooError

    if path.is_dir() and which != "last":
        return kept_student(path, which)
    if path.is_dir():
        found = next((path / name for name in RUN_DIR_STUDENTS if (path / name).is_file()), None)
        if found is None:
            raise KdzooError(
                f"{path} holds no {' or '.join(RUN_DIR_STUDENTS)}: give a kdzoo run folder, or its last.pt, "
                f"student.safetensors or student.onnx"
            )
        return found
    if not path.exists():
        raise KdzooError(
            f"{path} does not exist: give a run folder, or its last.pt, student.safetensors or student.onnx"
        )
    return path


def _eval_config(path: Path, raw: dict, overrides: tuple[str, ...]) -> RunConfig:
    """The run's config with ``--set`` overrides; data kdzoo cannot load (a run trained on the user's
    own DataLoaders) is said in one line, with how to score it instead."""
    from kdzoo.config import config_from_dict, merge, parse_override
    from kdzoo.data import DATASETS
    from kdzoo.errors import KdzooError

    for text in overrides:
        keys, value = parse_override(text)
        update: Any = value
        for part in reversed(keys):
            update = {part: update}
        raw = merge(raw, update)
    config = config_from_dict(raw, registry().config_classes())
    if config.data.name == CUSTOM_DATA:
        raise KdzooError(
            f"{path}: this run's data came from your own DataLoaders (kdzoo.distill, data.name '{CUSTOM_DATA}'), "
            f"which kdzoo cannot load again; score it in Python on your validation loader "
            f"(model = kdzoo.load_student('{path.parent / 'student.safetensors'}')), or give kdzoo data it can load: "
            f"--set data.name=NAME ({', '.join(DATASETS)}; with data.root=FOLDER)"
        )
    return config


#: the data name :func:`kdzoo.distill` records for batches that came from the user's own loaders
CUSTOM_DATA = "custom"


def _deployed_with_weights(
    config: RunConfig, num_classes: int, in_chans: int, path: Path, weights: dict, modules: dict | None
):
    """What the run deploys, with the weights read from ``path``; weights of another network are one line."""
    from kdzoo.engine.deployed import build_deployed
    from kdzoo.errors import KdzooError, error_line

    deployed = build_deployed(config, num_classes, in_chans)
    if modules is None:  # the exported file: the deployed network's own weights
        _check_fits(deployed.network, weights, path, config.student.model)
        deployed.network.load_state_dict(weights)
        return deployed.network
    _check_fits(deployed.student, weights, path, config.student.model)
    try:
        deployed.load_checkpoint_weights(weights, modules)
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:  # malformed method modules
        raise KdzooError(f"{path} does not hold the weights this run deploys: {error_line(exc)}") from None
    return deployed.network


def _check_fits(model, weights: dict, path: Path, model_name: str) -> None:
    """One line when ``weights`` are not ``model``'s (another model's file, or a damaged one)."""
    from kdzoo.errors import KdzooError

    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    reshaped = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or reshaped):
        return
    said = []
    if missing:
        said.append(f"{len(missing)} tensor(s) missing (e.g. '{missing[0]}')")
    if unexpected:
        said.append(f"{len(unexpected)} it does not have (e.g. '{unexpected[0]}')")
    if reshaped:
        k = reshaped[0]
        said.append(
            f"{len(reshaped)} of another shape (e.g. '{k}': {list(weights[k].shape)} in the file, {list(own[k].shape)})"
        )
    raise KdzooError(f"{path} does not hold this run's student ({model_name}): {'; '.join(said)}")


def _read_student(path: Path) -> tuple[dict, dict, dict | None]:
    """(run config, weights, method modules' weights) from a checkpoint, or (run config, the deployed
    network's weights, None) from an exported safetensors file; both read by the checked loader."""
    from kdzoo.checkpoint import load
    from kdzoo.engine.state import RunState

    if path.suffix == ".safetensors":
        return _read_config_beside(path), load(path), None
    state = RunState.load(path)
    return state.config, state.student, state.modules


def _read_config_beside(path: Path) -> dict:
    """The run config of an exported file (``config.json`` in its folder)."""
    from kdzoo.errors import KdzooError
    from kdzoo.reporting import read_json

    config_file = path.parent / "config.json"
    if not path.is_file():
        raise KdzooError(f"file not found: {path}")
    if not config_file.is_file():
        raise KdzooError(f"{path}: no config.json beside it to tell the model and data")
    return read_json(config_file, f"it tells the model and data of {path}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "safetensors", "hf"]),
    default="safetensors",
    show_default=True,
    help="onnx: PyTorch's exporter, checked by onnx and verified with onnxruntime on the validation set "
    "(pip install 'kdzoo[deploy]'); safetensors: written again from last.pt; hf: RUN_DIR/hf, a folder "
    "timm.create_model('local-dir:RUN_DIR/hf', pretrained=True) loads (weights, config.json with the "
    "student's input preparation, a model card).",
)
@click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    default=None,
    help="With --format onnx: also student.int8.onnx, post-training static quantization calibrated on 256 "
    "training images, scored beside the fp32 file.",
)
@which_student(
    "With --format onnx: which weights student.onnx holds: the last student, the best validation epoch's, "
    "or the EMA's (train.ema)."
)
@one_line_errors
def export(run_dir: str, fmt: str, quantize: str | None, which: str) -> None:
    """Export what a finished run deploys (the student, or what a method builds around it) into RUN_DIR."""
    from kdzoo.errors import KdzooError

    if quantize and fmt != "onnx":
        raise KdzooError("--quantize int8 quantizes the ONNX export: add --format onnx")
    if which != "last" and fmt != "onnx":
        raise KdzooError(
            f"--which {which}: the run already wrote student_{which}.safetensors; --format safetensors writes "
            f"student.safetensors again from last.pt (add --format onnx to export the {which} student)"
        )
    folder = _existing_run_dir(Path(run_dir))
    if fmt == "onnx":
        _export_onnx(folder, quantize, which)
    elif fmt == "hf":
        from kdzoo.tools.hub import write_hf_folder

        click.echo(str(write_hf_folder(folder)))
    else:
        _export_safetensors(folder)


@main.command()
@click.argument("run_dir", type=click.Path())
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repository private.")
@one_line_errors
def push(run_dir: str, repo_id: str, private: bool) -> None:
    """Upload a run's student to the Hugging Face Hub as REPO_ID (its RUN_DIR/hf folder, written first
    if missing: `kdzoo export RUN_DIR --format hf`). Log in first (`hf auth login`)."""
    from kdzoo.tools.hub import push as push_folder

    click.echo(push_folder(_existing_run_dir(Path(run_dir)), repo_id, private))


def _existing_run_dir(run_dir: Path) -> Path:
    from kdzoo.errors import KdzooError

    if not run_dir.exists():
        raise KdzooError(f"run folder {run_dir} does not exist: give the folder of a kdzoo run")
    if not (run_dir / "last.pt").is_file() and not (run_dir / "config.json").is_file():
        raise KdzooError(f"{run_dir} is not a kdzoo run folder (it holds neither last.pt nor config.json)")
    return run_dir


def _export_onnx(run_dir: Path, quantize: str | None, which: str = "last") -> None:
    from kdzoo.tools.deploy import export_onnx
    from kdzoo.tools.int8 import quantize_int8, verdict
    from kdzoo.tools.tradeoff import deploy_table, format_deploy_table

    record = export_onnx(run_dir, which)
    click.echo(
        f"{run_dir / record['file']} (from {record['weights']}): opset {record['opset']}, onnxruntime agrees with "
        f"PyTorch on {record['images']} validation images (top-1 agreement {100 * record['top1_agreement']:.2f}%, "
        f"largest logit gap {record['max_logit_gap']:.1e}, {record['max_logit_gap_relative']:.1e} of the largest logit)"
    )
    if quantize:
        q = quantize_int8(run_dir)
        click.echo(
            f"{run_dir / q['file']}: top-1 {q['int8_top1']:.2f}% (fp32 {q['fp32_top1']:.2f}%, "
            f"{q['top1_change']:+.2f}), {q['int8_bytes'] / 1e6:.2f} MB (fp32 {q['fp32_bytes'] / 1e6:.2f} MB), "
            f"calibrated on {q['calibration_images']} training images"
        )
        click.echo(verdict(q))
    click.echo("\n".join(["", *format_deploy_table(deploy_table(run_dir))]))
    click.echo(f"(in {run_dir / 'summary.json'}, 'deploy')")


def _export_safetensors(run_dir: Path) -> None:
    """``student.safetensors`` written again from ``last.pt`` (the way back from a damaged one)."""
    from kdzoo.config import config_from_dict
    from kdzoo.engine.deployed import build_deployed
    from kdzoo.engine.export import export_student
    from kdzoo.engine.state import RunState
    from kdzoo.errors import KdzooError

    record = run_dir / "student.json"
    if not record.is_file():
        raise KdzooError(f"{run_dir} has no student.json: the run has not finished (resume it first)")
    state = RunState.load(run_dir / "last.pt")
    config = config_from_dict(state.config, registry().config_classes())
    num_classes, in_chans = _student_shape(record, config)
    deployed = build_deployed(config, num_classes, in_chans)
    deployed.load_checkpoint_weights(state.student, state.modules)
    deploying = next((m for m in config.methods if m in deployed.modules), None)
    try:  # how the student's inputs were made, kept from the record being replaced
        inputs = json.loads(record.read_text()).get("input")
    except (OSError, ValueError, AttributeError):
        inputs = None
    export_student(deployed.network, config, num_classes, in_chans, run_dir, deploying, inputs=inputs)
    click.echo(str(run_dir / "student.safetensors"))


def _student_shape(record: Path, config: RunConfig) -> tuple[int, int]:
    """The student's classes and input channels: from ``student.json``, or from the run's data when a
    kill left that file damaged (it is written again with the student)."""
    try:
        kwargs = json.loads(record.read_text())["kwargs"]
        return int(kwargs["num_classes"]), int(kwargs["in_chans"])
    except (UnicodeDecodeError, ValueError, TypeError, KeyError):
        from kdzoo.data import load_data

        data = load_data(config.data, config.train.seed)
        return data.num_classes, data.in_chans


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@one_line_errors
def plot(run_dir: str) -> None:
    """Draw a run's loss terms and accuracy per epoch (PNG files in RUN_DIR)."""
    from kdzoo.reporting.plots import plot_run

    for path in plot_run(run_dir):
        click.echo(str(path))


@main.command()
@click.option(
    "--methods",
    "-m",
    required=True,
    help="Comma-separated methods, e.g. kd,fitnets,at,rkd,self-distill, or 'all' for every installed method.",
)
@click.option("--config", "-c", "configs", multiple=True, help="YAML config file(s) shared by every run.")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@click.option("--seeds", default=3, show_default=True, help="Seeds per method (0..N-1 after train.seed).")
@click.option(
    "--out", default=None, help="Output folder [default: <train.out_dir>/compare-<student>-<digest of its settings>]."
)
@click.option(
    "--deploy",
    is_flag=True,
    help="Also export each method's best run to ONNX and int8 and measure what it costs where it runs "
    "(pip install 'kdzoo[deploy]').",
)
@click.option(
    "--report-only",
    is_flag=True,
    help="Write the report from the runs finished so far and train nothing (e.g. while another compare "
    "trains them); the rest are listed as not finished yet.",
)
@one_line_errors
def compare(methods: str, configs, overrides, seeds: int, out: str | None, deploy: bool, report_only: bool) -> None:
    """Each method vs the student trained from scratch: same teacher, pair, data, epochs and seeds.

    Writes results.md / results.csv / results.png / accuracy_vs_cost.png: the methods ranked by
    last-epoch top-1 (mean ± std over seeds), each against scratch's spread, training cost relative to
    scratch, teacher/student parameters, FLOPs and CPU latency; a method whose defaults cannot run on
    the pair is listed with the reason. Restartable: finished runs are skipped.
    """
    from kdzoo.config import load_config
    from kdzoo.tools.compare import compare as run_compare
    from kdzoo.tools.compare import default_folder, resolve_methods

    reg = registry()
    asked = [m.strip() for m in methods.split(",") if m.strip()]
    _refuse_miscased_methods(tuple(asked), reg)
    names = resolve_methods(asked, reg, teachers=len(reg.methods))  # every one, to read the config with
    base = load_config(list(configs), list(overrides), names[:1], reg.config_classes())
    names = resolve_methods(asked, reg, teachers=max(len(base.teachers), 1))  # 'all': those its teachers can run
    folder = Path(out) if out else default_folder(base)
    first_seed = base.train.seed
    if deploy:
        from kdzoo.tools.deploy import require_deploy_extra

        require_deploy_extra("kdzoo compare --deploy")  # before hours of training, not after
    report = run_compare(
        asked,
        list(configs),
        list(overrides),
        list(range(first_seed, first_seed + seeds)),
        folder,
        reg,
        echo=click.echo,
        deploy=deploy,
        train=not report_only,
    )
    best = max(report["rows"], key=lambda r: r["last_top1_mean"])
    click.echo(
        f"results: {folder / 'results.md'} (best last-epoch top-1: {best['method']} {best['last_top1_mean']:.2f}%)"
    )


@main.command()
@click.option("--teacher", default="resnet18", show_default=True, help="timm teacher model.")
@click.option("--student", default="resnet10t", show_default=True, help="timm student model.")
@click.option(
    "--methods",
    default="kd,fitnets,at,rkd,kd+at+rkd",
    show_default=True,
    help="Comma-separated method stacks; '+' stacks methods in one run.",
)
@click.option("--img-size", default=32, show_default=True)
@click.option("--batch", default=64, show_default=True)
@click.option("--rounds", default=7, show_default=True, help="Interleaved rounds (medians are reported).")
@click.option("--steps", default=3, show_default=True, help="Steps per variant per round.")
@click.option(
    "--options",
    default="",
    help="Also measure every stack, and the floor in the same mode, with each of: channels_last,bf16,fp16,"
    "compile (the models),compile_objective (+ the distillation terms),reduce_overhead (+ CUDA graphs).",
)
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when there is one), cpu, cuda, cuda:1.")
@click.option(
    "--torchdistill",
    is_flag=True,
    help="Also time torchdistill's own step for the stacks it has (pip install 'kdzoo[bench]').",
)
@click.option(
    "--teacher-arg",
    "teacher_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="A timm.create_model argument for the teacher (repeatable), e.g. img_size=32.",
)
@click.option(
    "--student-arg",
    "student_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="A timm.create_model argument for the student (repeatable), e.g. patch_size=4.",
)
@click.option("--json", "json_out", default=None, help="Also write the raw numbers to this JSON file.")
@one_line_errors
def bench(
    teacher,
    student,
    methods,
    img_size,
    batch,
    rounds,
    steps,
    options,
    device,
    torchdistill,
    teacher_args,
    student_args,
    json_out,
) -> None:
    """Step cost of each method vs the floor (teacher forward + student step), one process, interleaved."""
    import tempfile

    from kdzoo.tools.bench import format_table, run_bench

    with tempfile.TemporaryDirectory() as tmp:
        report = run_bench(
            teacher,
            student,
            [m for m in methods.split(",") if m],
            img_size,
            batch,
            rounds,
            steps,
            options=[o for o in options.split(",") if o],
            tmp=Path(tmp),
            device=device,
            torchdistill=torchdistill,
            teacher_kwargs=_model_args(teacher_args, "--teacher-arg"),
            student_kwargs=_model_args(student_args, "--student-arg"),
        )
    click.echo(format_table(report))
    if json_out:
        from kdzoo.checkpoint import write_text_atomic

        write_text_atomic(json.dumps(report, indent=2), Path(json_out))


def _model_args(pairs: tuple[str, ...], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> keyword arguments, each value read as YAML (``32`` is an int), as ``--set``."""
    from kdzoo.config import parse_override

    args = {}
    for pair in pairs:
        path, value = parse_override(pair, option, "img_size=32")
        args[".".join(path)] = value
    return args


@main.command()
def plugins() -> None:
    """Every loaded plugin: distribution, version, methods, the hooks it implements and its import time;
    a CLASH line for each method name or entry-point name that two distributions share."""
    reg = registry()
    for plugin in reg.plugins:
        dist = f"{plugin.distribution} {plugin.version}".strip() or "(not from a distribution)"
        click.echo(
            f"{plugin.name}: {dist}\n  methods: {', '.join(plugin.methods) or '-'}\n  hooks: {', '.join(plugin.hooks)}"
            f"\n  import: {plugin.import_s:.2f} s"
        )
    for line in reg.clash_lines():
        click.echo(f"CLASH: {line}")
    for name, error in sorted(reg.failures.items()):
        click.echo(f"{name}: FAILED: {error}")


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
