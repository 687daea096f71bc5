"""One step of every stage of every built-in method, in this process or under torchrun (see test_distributed).

usage: python tests/ddp_methods.py OUT_FILE TEACHERS_DIR [KEY=VALUE ...] [CASE ...]

Each case trains two steps per stage (global batches of 8 with augmentation on: the stage's first step,
which the engine runs without DDP to learn which parameters it trains, and one under DDP), each seeing
the same images in one process and in two, and OUT_FILE (written by the main process)
holds each case's logged terms per stage and its trained weights. Teachers come as weight files,
so no teacher is trained here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from kdzoo.engine import build_trainer, step
from kdzoo.engine.distributed import process_group_left_at_exit
from kdzoo.registry import registry
from kdzoo.testing import ENSEMBLES, PAIRS, Case
from kdzoo.testing import tiny_config as conformance_config

#: every built-in method once, each stage of its schedule one epoch of two steps
CASES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "kd": ("kd", "resnet->resnet", ()),
    "kd-standardised": ("kd", "vit->resnet", ("kd.logit_standardization=true",)),
    "dkd": ("dkd", "resnet->resnet", ()),
    "ctkd": ("ctkd", "resnet->resnet", ()),
    "deit": ("deit", "resnet->deit", ()),
    "ofa": ("ofa", "resnet->vit", ()),
    "mlkd": ("mlkd", "resnet->resnet", ()),
    "dist": ("dist", "resnet->resnet", ()),
    "dist_plus": ("dist_plus", "resnet->resnet", ()),
    "skd": ("skd", "resnet->resnet", ()),
    "nst": ("nst", "resnet->resnet", ()),
    "vid": ("vid", "resnet->resnet", ()),
    "fsp": ("fsp", "resnet->resnet-same-widths", ("fsp.init_epochs=1",)),
    "ab": ("ab", "resnet->resnet", ("ab.init_epochs=1",)),
    "ofd": ("ofd", "resnet->resnet", ()),
    "ft": ("ft", "resnet->resnet", ("ft.paraphrase_epochs=1",)),
    "ickd": ("ickd", "resnet->resnet", ()),
    "srd": ("srd", "resnet->resnet", ()),
    "pad": ("pad", "resnet->resnet", ("pad.l2_epochs=1",)),
    "reviewkd": ("reviewkd", "resnet->resnet", ()),
    "simkd": ("simkd", "resnet->resnet", ()),
    "fitnets": ("fitnets", "resnet->resnet", ("fitnets.schedule=two_stage", "fitnets.hint_epochs=1")),
    "at": ("at", "resnet->resnet", ()),
    "rkd": ("rkd", "resnet->resnet", ()),
    "pkt": ("pkt", "resnet->resnet", ()),
    "sp": ("sp", "resnet->resnet", ()),
    "cc": ("cc", "resnet->resnet", ()),
    "crd": ("crd", "resnet->resnet", ("crd.nce_k=64",)),
    "sskd": ("sskd", "resnet->resnet", ("sskd.head_epochs=1",)),
    "self-distill": ("self-distill", "resnet->resnet", ("self-distill.generations=1",)),
    "byot": ("self-distill", "resnet->resnet", ("self-distill.variant=byot",)),
    "tfkd": ("tfkd", "resnet->resnet", ()),
    "mtkd": ("mtkd", "resnet+vit->resnet", ()),
}


def teachers_of(pair: str) -> list[tuple[str, dict]]:
    """The teachers (model, kwargs) of a conformance pair: one, or an ensemble's."""
    if pair in ENSEMBLES:
        return list(ENSEMBLES[pair][0])
    return [(PAIRS[pair][0], PAIRS[pair][1])]


def _given(pair: str, teachers: Path) -> str:
    """The setting that gives the pair's teachers as their weight files."""
    if pair not in ENSEMBLES:
        return f"teacher.checkpoint={teachers / PAIRS[pair][0]}.safetensors"
    given = [{"model": m, "kwargs": kw, "checkpoint": f"{teachers / m}.safetensors"} for m, kw in teachers_of(pair)]
    return f"teachers={json.dumps(given)}"


def run(name: str, out: Path, teachers: Path, extra: list[str]) -> dict:
    method, pair, settings = CASES[name]
    sets = (
        "data.train_limit=16",
        "data.batch_size=8",
        "data.augment=true",
        "train.epochs=1",
        _given(pair, teachers),
        *settings,
        *extra,
    )
    config = conformance_config(Case(method, "checkpoint", pair, sets), out)
    trainer = build_trainer(config, registry(), out / name, show_progress=False)
    # the loop's own epoch of each stage (two steps here), without its evaluation, checkpoints and plots
    terms = []
    trainer.hooks.call("kdzoo_on_run_start", run=trainer)
    for index, stage in enumerate(trainer.stages):
        trainer.hooks.call("kdzoo_on_stage_start", run=trainer, stage=stage, index=index, resumed=False)
        trainer.step.begin(stage)
        terms.append(trainer._train_epoch(stage, index, 0, index, 0, None))
        trainer.hooks.call("kdzoo_on_stage_end", run=trainer, stage=stage, index=index)
    weights = {f"student.{k}": v for k, v in trainer.student.state_dict().items()}
    weights.update({f"modules.{k}": v for k, v in trainer.modules.state_dict().items()})
    return {"terms": terms, "weights": weights}


def main(out_file: Path, teachers: Path, args: list[str]) -> None:
    step.significant = float  # the logged means unrounded: they are compared far below 7 digits
    extra, names = [a for a in args if "=" in a], [a for a in args if "=" not in a]
    results = {name: run(name, out_file.parent / "runs", teachers, extra) for name in names or CASES}
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        torch.save(results, out_file)


if __name__ == "__main__":
    with process_group_left_at_exit():  # a gloo group left to the interpreter's exit can abort it
        main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
