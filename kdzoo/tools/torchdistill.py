"""torchdistill's own training step, for ``kdzoo bench`` to time beside kdzoo's (optional extra).

:func:`torchdistill_step` builds a ``torchdistill.core.distillation.DistillationBox`` from a config
dict the way a torchdistill user writes one (teacher/student ``forward_hook`` paths, a
``WeightedSumLoss`` of registry losses, a registry optimizer and scheduler) and returns a closure
doing one step through the box's own per-step path: ``forward_process`` (teacher forward under
``no_grad``, student forward, the hooks' I/O dicts, the auxiliary wrapper's secondary forward, the
criterion) then ``post_forward_process`` (backward, optimizer step, zero_grad, scheduler step).
Nothing is computed by hand: the measured cost is torchdistill's.

Settings are kdzoo's defaults, read from kdzoo itself: the loss weights come from an
:class:`~kdzoo.engine.objective.Objective` built for the same stack and models (so the stacking rule "the
first selected method sets ``ce``" holds too), the FitNets stage pair and regressor
from the objective ``kdzoo.get_method("fitnets")`` builds (its taps and method modules), AT's pairs
from the public pairing helpers with AT's default settings (``pair_stages`` / ``inner_stages``), and the optimizer from
:class:`~kdzoo.config.OptimConfig` (SGD, momentum 0.9, weight decay 5e-4, the given ``lr``) with the
per-step cosine schedule ``kdzoo_step`` gets (T_max = the default epoch count, one batch an epoch).

Per method, torchdistill side -> kdzoo side:

* ``kd``: ``KDLoss(temperature=4, alpha=0.1, beta=0.9, reduction='batchmean')`` on the two models'
  outputs = ``0.1 CE + 0.9 T^2 KL``, batchmean: identical. (torchdistill feeds the KL
  ``softmax(t/T)`` as a probability target, kdzoo ``log_softmax(t/T)`` with ``log_target``: the same
  value up to rounding.)
* ``fitnets`` (joint): ``CrossEntropyLoss`` x 1 plus ``SimpleLossWrapper(MSELoss)`` x 100 between
  the student hint stage passed through a regressor and the teacher's guided stage, on the stage
  pair kdzoo picks. The regressor is kdzoo's own ``ConvRegressor``, a copy of the one kdzoo's FitNets
  builds for the pair (1x1 conv without bias + BN + ReLU for equal map sizes; the strided/transposed
  variants otherwise), held with the student by an auxiliary model wrapper registered in
  torchdistill's registry (``KdzooFitNetsRegressor``, run by the box's ``secondary_forward``) and
  trained by the same optimizer: identical. (torchdistill's stock ``Connector4DAB`` is conv + BN
  without the ReLU, and its ``ConvReg`` adaptation has a conv bias, so neither is the same shape.)
  Only the joint schedule; the two-stage one is not built.
* ``at``: ``CrossEntropyLoss`` x 1 plus ``ATLoss(mode='code')`` x 1000 over the (student, teacher)
  stage pairs kdzoo's AT plugin picks (every student stage but the stem and the last): identical
  when the paired maps have the same spatial size. torchdistill's ``ATLoss`` does not resample, so a
  pair of different sizes (kdzoo pools the larger attention map to the smaller) is refused with an
  error rather than measured unlike. ``p`` is fixed at 2 there, as kdzoo's default.
* ``rkd``: ``CrossEntropyLoss`` x 1 plus ``RKDLoss(dist_factor=25, angle_factor=50,
  reduction='mean')`` on the pooled pre-logits embedding (the output of the module feeding each
  model's classifier, found by one no-grad probe forward: ``global_pool`` in timm's CNNs), the
  embedding kdzoo's RKD uses: identical values. The cost differs by design: torchdistill's angle
  term builds the (B, B, D) difference tensor of the reference code (memory grows with B^2 D),
  kdzoo's works from Gram matrices. A model whose classifier input comes out of a functional op
  (``drop_rate > 0``) has no module to hook and is refused.
* ``pkt``: ``CrossEntropyLoss`` x 1 plus ``PKTLoss`` x 30000 on the pooled pre-logits embeddings
  (the same hooks as ``rkd``): identical values.
* ``dist``: ``CrossEntropyLoss`` x 1 plus ``DISTLoss(beta, gamma, tau)`` with kdzoo's weights:
  identical values (tests/test_zoo_logits.py checks the terms alone).
* stacks (e.g. ``kd+at+rkd``): one ``WeightedSumLoss`` of the same terms with kdzoo's stacked
  weights; ``KDLoss`` carries the ``ce`` term when ``kd`` is in the stack.

The teacher is deep-copied (torchdistill hooks its modules; the caller's teacher stays hook-free
for the other variants); the student is trained in place, as the other variants' students are.
One behaviour that shows in memory readings: torchdistill calls ``optimizer.zero_grad()`` (set to
None) right after each step, kdzoo just before the next backward, so between steps torchdistill
holds no gradients and a "peak above what was allocated before the step" counts the student's
gradients for torchdistill but not for kdzoo.

torchdistill 1.1.5 imported and ran unchanged under torch 2.14 (and 2.11): no workaround needed.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from kdzoo.errors import KdzooError

_BASE_METHODS = ("kd", "fitnets", "at", "rkd", "dist", "pkt")
TORCHDISTILL_METHODS: frozenset[str] = frozenset(
    "+".join(stack) for n in range(1, len(_BASE_METHODS) + 1) for stack in itertools.permutations(_BASE_METHODS, n)
)
_WRAPPER_KEY = "KdzooFitNetsRegressor"


def torchdistill_available() -> bool:
    """Whether torchdistill imports (the ``torchdistill`` extra is installed and loads)."""
    try:
        import torchdistill.core.distillation  # noqa: F401
    except Exception:  # ImportError, or an incompatibility raised while importing
        return False
    return True


class TorchdistillStep:
    """One torchdistill training step per call. ``box`` is the ``DistillationBox``; ``last_loss``
    the detached total loss of the last call (no host sync)."""

    def __init__(self, box: Any, x: Tensor, y: Tensor):
        self.box, self.x, self.y = box, x, y
        self.last_loss: Tensor | None = None

    def __call__(self) -> None:
        box = self.box
        box.pre_forward_process()
        loss = box.forward_process(self.x, self.y, {})
        box.post_forward_process(loss)
        self.last_loss = loss.detach()


def _quiet() -> None:
    # torchdistill's loggers are children of the root logger named after its modules: quiet them all
    logging.getLogger("torchdistill").setLevel(logging.WARNING)


def _register_wrapper() -> None:
    from torchdistill.models.registry import AUXILIARY_MODEL_WRAPPER_DICT, register_auxiliary_model_wrapper
    from torchdistill.models.wrapper import AuxiliaryModelWrapper

    if _WRAPPER_KEY in AUXILIARY_MODEL_WRAPPER_DICT:
        return

    class KdzooFitNetsRegressor(AuxiliaryModelWrapper):
        """The student plus FitNets' regressor, applied to the hooked hint stage in ``secondary_forward``."""

        def __init__(
            self, student_model: nn.Module, regressor: nn.Module, hint_path: str, target_size: tuple[int, int], **kwargs
        ):
            super().__init__()
            self.student_model = student_model
            self.regressor = regressor
            self.hint_path = hint_path
            self.target_size = tuple(target_size)

        def forward(self, x: Tensor) -> Tensor:
            return self.student_model(x)

        def secondary_forward(self, io_dict: dict) -> None:
            self.regressor(io_dict[self.hint_path]["output"], self.target_size)

    register_auxiliary_model_wrapper(key=_WRAPPER_KEY)(KdzooFitNetsRegressor)


def _probe(model: nn.Module, x: Tensor) -> tuple[dict[str, tuple[int, ...]], str | None]:
    """One no-grad eval forward on two samples: every module's output shape by path, and the path of
    the module whose output is the classifier's input (the pooled pre-logits embedding)."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    seen: list[tuple[str, Any]] = []
    fed: list[Tensor] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        if module is classifier:
            handles.append(module.register_forward_pre_hook(lambda _m, args: fed.append(args[0])))
        else:
            handles.append(module.register_forward_hook(lambda _m, _i, out, name=name: seen.append((name, out))))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x[:2])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    shapes = {name: tuple(out.shape) for name, out in seen if isinstance(out, Tensor)}
    embedding = [name for name, out in seen if fed and out is fed[0]]
    return shapes, (embedding[-1] if embedding else None)


def _wrapped_term(criterion: str, input_path: str, target: dict[str, Any], weight: float) -> dict[str, Any]:
    """A ``SimpleLossWrapper`` sub-term: ``criterion(student output at input_path, target)``."""
    return {
        "criterion": {"key": criterion, "kwargs": {"reduction": "mean"}},
        "criterion_wrapper": {
            "key": "SimpleLossWrapper",
            "kwargs": {
                "input": {"is_from_teacher": False, "module_path": input_path, "io": "output"},
                "target": target,
            },
        },
        "weight": weight,
    }


def _kdzoo_objective(names: list[str], teacher: nn.Module, student: nn.Module, img_size: int):
    """kdzoo's objective for ``names`` (the public ``kdzoo.get_method``): its weights, taps and
    method modules are what torchdistill must use. It is only read, never run."""
    from kdzoo.library import get_method

    objective = get_method(names, teacher=teacher, student=student, img_size=img_size)
    objective.close()  # the extractor may hook non-native models
    return objective


def torchdistill_config(
    stack: str, teacher: nn.Module, student: nn.Module, x: Tensor, lr: float = 0.01
) -> dict[str, Any]:
    """The DistillationBox ``train_config`` for ``stack`` on these models (kdzoo's settings)."""
    from kdzoo.api import WHOLE_RUN, pair_inner_stages
    from kdzoo.config import OptimConfig, TrainConfig
    from kdzoo.library import method_config

    names = stack.split("+")
    if stack not in TORCHDISTILL_METHODS:
        raise KdzooError(f"torchdistill adapter: no equivalent for '{stack}' (have {', '.join(_BASE_METHODS)})")
    objective = _kdzoo_objective(names, teacher, student, int(x.shape[-1]))
    weights = objective.loss_weights(WHOLE_RUN, 0, 0.0)
    s_info, t_info = objective.student_info, objective.teacher_info
    if names != ["kd"]:  # feature methods need the models' module shapes and embedding paths
        (s_shapes, s_embed), (t_shapes, t_embed) = _probe(student, x), _probe(teacher, x)
    t_hooks: set[str] = set()
    s_hooks: set[str] = set()
    terms: dict[str, Any] = {}
    student_cfg: dict[str, Any] = {"forward_proc": "forward_batch_only", "requires_grad": True}
    prefix = ""  # student paths are relative to the auxiliary wrapper when there is one

    if "fitnets" in names:
        if method_config("fitnets").schedule != "joint":
            raise KdzooError("torchdistill adapter: only FitNets' joint schedule is built")
        fit = _kdzoo_objective(["fitnets"], teacher, student, int(x.shape[-1]))
        s_stage, t_stage = s_info.stages[fit.taps.student[0]], t_info.stages[fit.taps.teacher[0]]
        prefix = "student_model."
        student_cfg["auxiliary_model_wrapper"] = {
            "key": _WRAPPER_KEY,
            "kwargs": {
                # kdzoo's own regressor for this pair (the module FitNets builds, sized from feature_info)
                "regressor": copy.deepcopy(fit.method_modules["fitnets"]["regressor"]),
                "hint_path": prefix + s_stage.module,
                "target_size": t_shapes[t_stage.module][-2:],
            },
        }
        s_hooks |= {prefix + s_stage.module, "regressor"}
        t_hooks.add(t_stage.module)
        teacher_map = {"is_from_teacher": True, "module_path": t_stage.module, "io": "output"}
        terms["hint"] = _wrapped_term("MSELoss", "regressor", teacher_map, weights["hint"])

    if "at" in names:
        at = method_config("at")
        if at.p != 2 or at.form != "code":
            raise KdzooError("torchdistill adapter: ATLoss has p = 2 and kdzoo's 'code' form only")
        at_pairs = pair_inner_stages(t_info, s_info)  # AT's default pairing
        s_paths = [s_info.stages[s].module for s, _ in at_pairs]
        t_paths = [t_info.stages[t].module for _, t in at_pairs]
        pairs = {}
        for i, (sp, tp) in enumerate(zip(s_paths, t_paths, strict=True)):
            if s_shapes[sp][-2:] != t_shapes[tp][-2:]:
                raise KdzooError(
                    f"torchdistill adapter: AT pair student {sp} {s_shapes[sp][-2:]} / teacher {tp} "
                    f"{t_shapes[tp][-2:]} differ in size; torchdistill's ATLoss does not resample"
                )
            pairs[f"pair{i}"] = {
                "student": {"io": "output", "path": prefix + sp},
                "teacher": {"io": "output", "path": tp},
                "weight": 1,
            }
        s_hooks |= {prefix + p for p in s_paths}
        t_hooks |= set(t_paths)
        terms["at"] = {
            "criterion": {"key": "ATLoss", "kwargs": {"at_pairs": pairs, "mode": "code"}},
            "weight": weights["at"],
        }

    if "rkd" in names:
        if s_embed is None or t_embed is None:
            raise KdzooError("torchdistill adapter: no module outputs the pre-logits embedding (drop_rate > 0?)")
        s_hooks.add(prefix + s_embed)
        t_hooks.add(t_embed)
        terms["rkd"] = {
            "criterion": {
                "key": "RKDLoss",
                "kwargs": {
                    "student_output_path": prefix + s_embed,
                    "teacher_output_path": t_embed,
                    "dist_factor": weights["rkd_distance"],
                    "angle_factor": weights["rkd_angle"],
                    "reduction": "mean",
                },
            },
            "weight": 1.0,
        }

    if "pkt" in names:
        if s_embed is None or t_embed is None:
            raise KdzooError("torchdistill adapter: no module outputs the pre-logits embedding (drop_rate > 0?)")
        s_hooks.add(prefix + s_embed)
        t_hooks.add(t_embed)
        paths = {"student_module_path": prefix + s_embed, "student_module_io": "output"}
        paths |= {"teacher_module_path": t_embed, "teacher_module_io": "output"}
        terms["pkt"] = {"criterion": {"key": "PKTLoss", "kwargs": paths}, "weight": weights["pkt"]}

    logits = {"student_module_path": ".", "student_module_io": "output"}
    logits |= {"teacher_module_path": ".", "teacher_module_io": "output"}
    ce = weights.get("ce", 0.0)
    if "kd" in names:
        t = method_config("kd").temperature
        if ce:  # KDLoss = alpha * CE + beta * T^2 * KL: it carries the ce term
            kwargs = {**logits, "temperature": t, "alpha": ce, "beta": weights["kd"]}
            terms = {"kd": {"criterion": {"key": "KDLoss", "kwargs": kwargs}, "weight": 1.0}, **terms}
        else:  # alpha unset: KDLoss returns the bare KL, without T^2
            kwargs = {**logits, "temperature": t, "alpha": None, "beta": 1.0}
            terms["kd"] = {"criterion": {"key": "KDLoss", "kwargs": kwargs}, "weight": weights["kd"] * t * t}
    if "dist" in names:  # DISTLoss = beta * inter + gamma * intra, with tau^2 inside each
        kwargs = {
            **logits,
            "beta": weights["dist_inter"],
            "gamma": weights["dist_intra"],
            "tau": method_config("dist").tau,
        }
        terms["dist"] = {"criterion": {"key": "DISTLoss", "kwargs": kwargs}, "weight": 1.0}
    if ce and "kd" not in names:
        terms["ce"] = _wrapped_term("CrossEntropyLoss", ".", {"uses_label": True}, ce)

    optim = OptimConfig(lr=lr)
    teacher_cfg: dict[str, Any] = {"forward_proc": "forward_batch_only", "requires_grad": False}
    if t_hooks:
        teacher_cfg["forward_hook"] = {"input": [], "output": sorted(t_hooks)}
    if s_hooks:
        student_cfg["forward_hook"] = {"input": [], "output": sorted(s_hooks)}
    return {
        "num_epochs": 1,
        "teacher": teacher_cfg,
        "student": student_cfg,
        "optimizer": {
            "key": "SGD",
            "kwargs": {
                "lr": optim.lr,
                "momentum": optim.momentum,
                "weight_decay": optim.weight_decay,
                "nesterov": optim.nesterov,
            },
        },
        # kdzoo_step's schedule: cosine over the default epochs of one batch each, stepped per batch
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": TrainConfig().epochs}, "scheduling_step": 1},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": terms}},
    }


def torchdistill_step(
    stack: str, teacher: nn.Module, student: nn.Module, x: Tensor, y: Tensor, lr: float = 0.01
) -> Callable[[], None]:
    """A closure doing one training step of ``stack`` through torchdistill's ``DistillationBox``.

    Built on ``x.device``; the closure feeds ``x, y`` directly, never syncs and never prints. The
    returned :class:`TorchdistillStep` also exposes ``box`` and ``last_loss``.
    """
    _quiet()
    from torchdistill.core.distillation import DistillationBox

    _register_wrapper()
    device = x.device
    teacher = copy.deepcopy(teacher).to(device).eval().requires_grad_(False)
    student = student.to(device)
    config = torchdistill_config(stack, teacher, student, x, lr)
    device_ids = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    )
    box = DistillationBox(teacher, student, {}, config, device, device_ids, False, 1)
    box.pre_epoch_process(epoch=0)  # clears the I/O dicts and puts the student in train mode
    box.teacher_model.eval()
    return TorchdistillStep(box, x, y)
