"""The ``kdzoo`` command line: run, list, show, eval."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from kdzoo.config import RunConfig, as_dict, config_from_dict, load_config
from kdzoo.engine.locking import check_writable
from kdzoo.engine.resume import ResumeTarget, resume_given, resume_latest
from kdzoo.engine.state import RunState
from kdzoo.errors import KdzooError
from kdzoo.registry import registry


def one_line_errors(fn):
    """A :class:`KdzooError` becomes ``Error: <message>`` and exit code 1, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KdzooError as exc:
            if os.environ.get("KDZOO_DEBUG"):  # the full traceback, for plugin authors
                raise
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kdzoo")
def main() -> None:
    """kdzoo: knowledge distillation for any timm teacher/student pair, one plugin per method."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # per-epoch lines show up even when piped to a file


def default_run_dir(config: RunConfig) -> Path:
    name = config.train.name or f"{'+'.join(config.methods)}-{config.student.model}-seed{config.train.seed}"
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
@one_line_errors
def run(methods, configs, overrides, resume, quiet, nproc) -> None:
    """Distill a teacher into a student with one or more methods."""
    from kdzoo.engine import build_trainer
    from kdzoo.engine.distributed import process_group_left_at_exit

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise SystemExit(launch_torchrun(nproc))

    reg = registry()
    state = None
    if resume:
        target = _resume_target(resume, list(configs), list(overrides), list(methods), reg)
        if target.finished:
            summary = json.loads((target.run_dir / "summary.json").read_text())
            click.echo(
                f"{target.run_dir} is finished ({summary['epochs']} epochs, student top-1 "
                f"{summary['student_top1']:.2f}%): nothing to resume; to train it longer, add "
                f"--set train.epochs=N with N > {target.config.train.epochs}"
            )
            return
        config, run_dir, state = target.config, target.run_dir, target.state
        if not quiet and os.environ.get("RANK", "0") == "0":
            for note in target.notes:
                click.echo(note, err=True)
    else:
        config = load_config(list(configs), list(overrides), list(methods), reg.config_classes(), reg.failures)
        run_dir = default_run_dir(config)
        check_writable(run_dir.parent)  # before a teacher is trained for minutes
    with process_group_left_at_exit():
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


def _resume_target(resume: str, configs: list[str], overrides: list[str], methods: list[str], reg) -> ResumeTarget:
    if resume != "auto":
        return resume_given(Path(resume), configs, overrides, methods, reg)
    wanted = load_config(configs, overrides, methods, reg.config_classes(), reg.failures)
    return resume_latest(default_run_dir(wanted), wanted, reg)


def launch_torchrun(nproc: int) -> int:
    """Re-run this very command under ``torchrun --standalone --nproc-per-node N``."""
    import subprocess

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "kdzoo",
        *args,
    ]
    return subprocess.call(command)


@main.command("list")
def list_cmd() -> None:
    """Installed methods, their papers and the plugins they come from."""
    from kdzoo.api import KINDS

    reg = registry()
    for kind in KINDS:
        methods = sorted((name, info) for name, info in reg.methods.items() if info.kind == kind)
        if methods:
            click.echo(f"== {kind} methods ==")
        for name, info in methods:
            source = f"{info.plugin} ({info.distribution} {info.version})".replace(" ( )", "")
            click.echo(f"{name:<14} {info.summary}\n{'':<14} paper: {info.paper}\n{'':<14} plugin: {source}")
    for plugin, error in sorted(reg.failures.items()):
        click.echo(f"{'[failed]':<14} plugin '{plugin}' did not load: {error}")


@main.command()
@click.argument("method")
@one_line_errors
def show(method: str) -> None:
    """A method's config with its defaults (YAML, ready to paste under its name in a config file)."""
    info = registry().get(method)
    click.echo(f"# {info.name}: {info.summary}\n# paper: {info.paper}")
    defaults = as_dict(info.config_class()) if dataclasses.is_dataclass(info.config_class) else {}
    click.echo(yaml.safe_dump({info.name: defaults}, sort_keys=False).rstrip())


@main.command("eval")
@click.argument("checkpoint_path", metavar="CHECKPOINT")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE", help="Override data.* keys.")
@one_line_errors
def eval_cmd(checkpoint_path: str, overrides) -> None:
    """Accuracy of a run's deployed student on its validation data.

    CHECKPOINT: a run's last.pt, or its exported student.safetensors or student.onnx (run by
    onnxruntime; read with the run's config.json beside it). What a method deploys around the
    student (SimKD's projector and reused teacher classifier) is scored with it.
    """
    from kdzoo.config import merge, parse_override
    from kdzoo.data import load_data
    from kdzoo.engine import pick_device
    from kdzoo.engine.deployed import build_deployed
    from kdzoo.engine.evaluate import evaluate

    if Path(checkpoint_path).suffix == ".onnx":
        raw, weights, modules = _read_config_beside(Path(checkpoint_path)), None, None
    else:
        raw, weights, modules = _read_student(Path(checkpoint_path))
    for text in overrides:
        path, value = parse_override(text)
        update: dict = value
        for part in reversed(path):
            update = {part: update}
        raw = merge(raw, update)
    config = config_from_dict(raw, registry().config_classes())
    data = load_data(config.data, config.train.seed)
    if weights is None:  # an ONNX file, run by onnxruntime on the CPU
        from kdzoo.tools.deploy import OnnxStudent

        model, device = OnnxStudent(Path(checkpoint_path)), pick_device("cpu")
        scores = evaluate(model, data.val.epoch(0), data.num_classes)
        click.echo(" ".join(f"{k}={v:.2f}" if k != "loss" else f"{k}={v:.4f}" for k, v in scores.items()))
        return
    deployed = build_deployed(config, data.num_classes, data.in_chans)
    if modules is None:  # the exported file: the deployed network's own weights
        deployed.network.load_state_dict(weights)
    else:
        deployed.load_checkpoint_weights(weights, modules)
    model = deployed.network
    device = pick_device(config.train.device)
    model.to(device)
    scores = evaluate(model, data.val.to(device).epoch(0), data.num_classes)
    click.echo(" ".join(f"{k}={v:.2f}" if k != "loss" else f"{k}={v:.4f}" for k, v in scores.items()))


def _read_student(path: Path) -> tuple[dict, dict, dict | None]:
    """(run config, weights, method modules' weights) from a checkpoint, or (run config, the deployed
    network's weights, None) from an exported safetensors file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return _read_config_beside(path), load_file(str(path)), None
    state = RunState.load(path)
    return state.config, state.student, state.modules


def _read_config_beside(path: Path) -> dict:
    """The run config of an exported file (``config.json`` in its folder)."""
    config_file = path.parent / "config.json"
    if not path.is_file():
        raise KdzooError(f"file not found: {path}")
    if not config_file.is_file():
        raise KdzooError(f"{path}: no config.json beside it to tell the model and data")
    return json.loads(config_file.read_text())


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "safetensors"]),
    default="safetensors",
    show_default=True,
    help="onnx: PyTorch's exporter, checked by onnx and verified with onnxruntime on the validation set "
    "(pip install 'kdzoo[deploy]'); safetensors: written again from last.pt.",
)
@click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    default=None,
    help="With --format onnx: also student.int8.onnx, post-training static quantization calibrated on 256 "
    "training images, scored beside the fp32 file.",
)
@one_line_errors
def export(run_dir: str, fmt: str, quantize: str | None) -> None:
    """Export what a finished run deploys (the student, or what a method builds around it) into RUN_DIR."""
    if quantize and fmt != "onnx":
        raise KdzooError("--quantize int8 quantizes the ONNX export: add --format onnx")
    if fmt == "onnx":
        from kdzoo.tools.deploy import export_onnx, quantize_int8

        record = export_onnx(run_dir)
        click.echo(
            f"{Path(run_dir) / record['file']}: opset {record['opset']}, onnxruntime agrees with PyTorch on "
            f"{record['images']} validation images (top-1 {100 * record['top1_agreement']:.2f}%, largest logit "
            f"gap {record['max_logit_gap']:.1e}, {record['max_logit_gap_relative']:.1e} of the largest logit)"
        )
        if quantize:
            q = quantize_int8(run_dir)
            click.echo(
                f"{Path(run_dir) / q['file']}: top-1 {q['int8_top1']:.2f}% (fp32 {q['fp32_top1']:.2f}%, "
                f"{q['top1_change']:+.2f}), {q['int8_bytes'] / 1e6:.2f} MB (fp32 {q['fp32_bytes'] / 1e6:.2f} MB), "
                f"calibrated on {q['calibration_images']} training images"
            )
        from kdzoo.tools.tradeoff import deploy_table, format_deploy_table

        click.echo("\n".join(["", *format_deploy_table(deploy_table(run_dir))]))
        click.echo(f"(in {Path(run_dir) / 'summary.json'}, 'deploy')")
        return
    from kdzoo.engine.deployed import build_deployed
    from kdzoo.engine.export import export_student

    record = Path(run_dir) / "student.json"
    if not record.is_file():
        raise KdzooError(f"{run_dir} has no student.json: the run has not finished (resume it first)")
    kwargs = json.loads(record.read_text())["kwargs"]
    state = RunState.load(Path(run_dir) / "last.pt")
    config = config_from_dict(state.config, registry().config_classes())
    deployed = build_deployed(config, kwargs["num_classes"], kwargs["in_chans"])
    deployed.load_checkpoint_weights(state.student, state.modules)
    deploying = next((m for m in config.methods if m in deployed.modules), None)
    export_student(deployed.network, config, kwargs["num_classes"], kwargs["in_chans"], Path(run_dir), deploying)
    click.echo(str(Path(run_dir) / "student.safetensors"))


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
@click.option("--out", default=None, help="Output folder [default: <train.out_dir>/compare-<student>].")
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
    from kdzoo.tools.compare import compare as run_compare
    from kdzoo.tools.compare import resolve_methods

    reg = registry()
    asked = [m.strip() for m in methods.split(",") if m.strip()]
    names = resolve_methods(asked, reg)
    base = load_config(list(configs), list(overrides), names[:1], reg.config_classes())
    folder = Path(out) if out else Path(base.train.out_dir) / f"compare-{base.student.model}"
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
        Path(json_out).write_text(json.dumps(report, indent=2))


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
    """Every loaded plugin: distribution, version, methods and the hooks it implements."""
    reg = registry()
    for plugin in reg.plugins:
        dist = f"{plugin.distribution} {plugin.version}".strip() or "(not from a distribution)"
        click.echo(
            f"{plugin.name}: {dist}\n  methods: {', '.join(plugin.methods) or '-'}\n  hooks: {', '.join(plugin.hooks)}"
        )
    for name, error in sorted(reg.failures.items()):
        click.echo(f"{name}: FAILED: {error}")


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
