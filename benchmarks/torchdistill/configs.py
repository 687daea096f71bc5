"""The torchdistill ``train_config`` of a kdzoo stack, which ``kdzoo_benchmarks.torchdistill.adapter`` runs.

The config is written the way a torchdistill user writes one (teacher/student ``forward_hook``
paths, auxiliary model wrappers, a ``WeightedSumLoss`` of registry losses, a registry optimizer and
scheduler), so the step measured is torchdistill's own.

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
  torchdistill's registry (``KdzooMethodModules``: the model plus copies of kdzoo's method modules,
  run on the hooked outputs by the box's ``secondary_forward``) and trained by the same optimizer:
  identical. (torchdistill's stock ``Connector4DAB`` is conv + BN without the ReLU, and its
  ``ConvReg`` adaptation has a conv bias, so neither is the same shape.)
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
  identical values (tests/methods/test_dist.py checks the terms alone).
* ``dist_plus``: ``DISTPlusLoss`` on kdzoo's projector output (in the wrapper) and the teacher's last
  stage. torchdistill adds the raw channel correlation where kdzoo adds ``1 -`` it, so the totals
  differ by exactly ``channel_weight (1 - 2 x kdzoo's channel term)`` (tested).
* ``sp``: ``SPKDLoss`` x 3000 on the last stages. Its Gram rows are L1-normalised where kdzoo
  follows the paper's L2: with torchdistill's ``normalize`` patched to L2 the first step is equal
  (tested); the cost is the same either way.
* ``cc``: ``CCKDLoss`` (Gaussian kernel, gamma 0.4, order 2) on kdzoo's linear embeddings,
  L2-normalised as kdzoo does so the kernels are equal; torchdistill does not square the norm, so
  its term is ``sqrt(kdzoo's) / B`` (tested).
* ``vid``: ``VIDLoss`` on kdzoo's regressors (each inner stage pair, VID's default pairing; their
  per-channel variance reshaped for ``VIDLoss``): identical values. Pairs of different map sizes
  (kdzoo pools the larger) are refused, as for AT.
* ``ft``: the main stage (the one the bench times): ``FTLoss`` (p = 1) between kdzoo's translator
  and its frozen paraphraser's factor (in a teacher-side wrapper), plus CE: identical values.
  AB and FSP are not built: they distil in an ``init`` stage that trains part of the student on
  the distillation term alone, which would take torchdistill's multi-stage configs and frozen
  modules; kdzoo's bench times that stage for them against the floor.
* ``reviewkd``: copies of kdzoo's attention-based fusions in the wrapper, run deep to shallow over
  the hooked student levels and embedding; one ``HierarchicalContextLoss`` per level against the
  teacher's pre-activation map, hooked at the *input* of the activation ending the stage (made
  out-of-place on the adapter's private teacher copy, else the in-place ReLU would overwrite it),
  and the teacher's embedding as a 1 x 1 map for the deepest level: identical values.
* ``ickd``: ``ChSimLoss`` on kdzoo's embedding of the student's last stage (a copy of ICKD's 1x1
  conv + BN, in the wrapper) and the teacher's last stage, weighted ``2.5 B`` (torchdistill divides
  by ``C B^2``, kdzoo by ``C B``), plus ``KDLoss`` (T = 4) and CE: identical values.
* ``srd``: ``SRDLoss`` (``2 log sum |z_s - z_t|^4 + KL`` at T = 1) on copies of kdzoo's projector and
  affine-free batch norms (the teacher's norm in a teacher-side wrapper, in training mode as
  kdzoo's), plus CE: identical values.
* ``skd``: ``SKDInstanceLoss`` and ``SKDDirectionLoss`` in kdzoo's ``form`` (``mode``), each x 0.9,
  plus CE x 0.1. The direction term is identical; in the ``code`` form torchdistill masks each
  sample's KL where the authors' code (and kdzoo) scales the batch's KL by the masked fraction, so
  the first-step loss differs by exactly that (tests/tools/test_bench_torchdistill.py).
* ``pad``: the distilling stage (the one the bench times): ``PADL2Loss`` on copies of kdzoo's
  regressor and variance branch, plus CE: identical values.
* stacks (e.g. ``kd+at+rkd``): one ``WeightedSumLoss`` of the same terms with kdzoo's stacked
  weights; ``KDLoss`` carries the ``ce`` term when ``kd`` is in the stack.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.errors import KdzooError

TORCHDISTILL_METHODS: frozenset[str] = frozenset(
    (
        "kd",
        "fitnets",
        "at",
        "rkd",
        "dist",
        "dist_plus",
        "pkt",
        "sp",
        "cc",
        "vid",
        "ft",
        "ickd",
        "srd",
        "skd",
        "pad",
        "reviewkd",
    )
)
WRAPPER_KEY = "KdzooMethodModules"  # the auxiliary model wrapper holding kdzoo's method modules
# methods whose modules run on the student's / the teacher's taps
_WRAPS_STUDENT = {"fitnets", "dist_plus", "cc", "vid", "ft", "ickd", "srd", "pad", "reviewkd"}
_WRAPS_TEACHER = {"cc", "ft", "srd", "reviewkd"}


def torchdistill_supports(stack: str) -> bool:
    """Whether the adapter builds ``stack`` (``+``-joined methods, each once, each one it has)."""
    names = stack.split("+")
    return len(set(names)) == len(names) and set(names) <= TORCHDISTILL_METHODS


SecondaryStep = Callable[[dict, nn.ModuleDict], None]


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


class _Unit(nn.Module):
    """A view of a linear embedding whose output is L2-normalised (CC's input to the kernel)."""

    def __init__(self, linear: nn.Module):
        super().__init__()
        self.linear = linear

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x), dim=1)


class _VIDOutput(nn.Module):
    """A view of kdzoo's VID regressor giving ``VIDLoss`` its (mean, variance as (1, C, 1, 1)) pair."""

    def __init__(self, regressor: nn.Module):
        super().__init__()
        self.regressor = regressor

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, variance = self.regressor(x)
        return mean, variance.view(1, -1, 1, 1)


class _AsMap(nn.Module):
    """A pooled embedding (B, D) as a (B, D, 1, 1) map (ReviewKD's deepest level)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, :, None, None]


def _embedding_paths(student_embed: str | None, teacher_embed: str | None) -> tuple[str, str]:
    if student_embed is None or teacher_embed is None:
        raise KdzooError("torchdistill adapter: no module outputs the pre-logits embedding (drop_rate > 0?)")
    return student_embed, teacher_embed


class _ConfigBuilder:
    """Builds the ``train_config`` term by term: one method per torchdistill method."""

    def __init__(self, names: list[str], teacher: nn.Module, student: nn.Module, x: Tensor):
        from kdzoo.api import WHOLE_RUN

        self.names, self.teacher, self.student, self.x = names, teacher, student, x
        objective = _kdzoo_objective(names, teacher, student, int(x.shape[-1]))
        self.weights = objective.loss_weights(WHOLE_RUN, 0, 0.0)
        self.s_info, self.t_info = objective.student_info, objective.teacher_info
        if names != ["kd"]:  # feature methods need the models' module shapes and embedding paths
            (self.s_shapes, self.s_embed), (self.t_shapes, self.t_embed) = _probe(student, x), _probe(teacher, x)
        self.s_hooks: set[str] = set()
        self.t_hooks: set[str] = set()
        self.t_input_hooks: set[str] = set()  # modules whose *input* is the map (pre-activation taps)
        self.terms: dict[str, Any] = {}
        # model paths are relative to the auxiliary wrapper when there is one
        self.s_prefix = "model." if _WRAPS_STUDENT & set(names) else ""
        self.t_prefix = "model." if _WRAPS_TEACHER & set(names) else ""
        self.s_modules: dict[str, nn.Module] = {}
        self.t_modules: dict[str, nn.Module] = {}
        self.s_steps: list[SecondaryStep] = []
        self.t_steps: list[SecondaryStep] = []

    def kdzoo_modules(self, method: str) -> tuple[Any, dict[str, nn.Module]]:
        """kdzoo's objective for ``method`` alone and copies of its method modules (kdzoo's own
        shapes and initialisation; tests load the same weights into both sides)."""
        objective = _kdzoo_objective([method], self.teacher, self.student, int(self.x.shape[-1]))
        return objective, {name: copy.deepcopy(m) for name, m in objective.method_modules[method].items()}

    def student_map(self, index: int) -> str:
        return self.s_prefix + self.s_info.stages[index].module

    def teacher_map(self, index: int) -> str:
        return self.t_prefix + self.t_info.stages[index].module

    def logit_paths(self) -> dict[str, str]:
        return {
            "student_module_path": ".",
            "student_module_io": "output",
            "teacher_module_path": ".",
            "teacher_module_io": "output",
        }

    def bare_kl(self, temperature: float, weight: float) -> dict[str, Any]:
        """``weight * T^2 KL``: KDLoss with ``alpha`` unset returns the KL without ``T^2``."""
        kwargs = {**self.logit_paths(), "temperature": temperature, "alpha": None, "beta": 1.0}
        return {"criterion": {"key": "KDLoss", "kwargs": kwargs}, "weight": weight * temperature * temperature}

    def fitnets(self) -> None:
        from kdzoo.library import method_config

        if method_config("fitnets").schedule != "joint":
            raise KdzooError("torchdistill adapter: only FitNets' joint schedule is built")
        fit, modules = self.kdzoo_modules("fitnets")
        hint, guided = self.student_map(fit.taps.student[0]), self.teacher_map(fit.taps.teacher[0])
        size = self.t_shapes[guided[len(self.t_prefix) :]][-2:]
        self.s_modules["fitnets__regressor"] = modules["regressor"]
        self.s_steps.append(lambda io, m: m["fitnets__regressor"](io[hint]["output"], size))
        self.s_hooks |= {hint, "method.fitnets__regressor"}
        self.t_hooks.add(guided)
        target = {"is_from_teacher": True, "module_path": guided, "io": "output"}
        self.terms["hint"] = _wrapped_term("MSELoss", "method.fitnets__regressor", target, self.weights["hint"])

    def at(self) -> None:
        from kdzoo.api import pair_inner_stages
        from kdzoo.library import method_config

        at = method_config("at")
        if at.p != 2 or at.form != "code":
            raise KdzooError("torchdistill adapter: ATLoss has p = 2 and kdzoo's 'code' form only")
        pairs = {}
        for i, (s, t) in enumerate(pair_inner_stages(self.t_info, self.s_info)):  # AT's default pairing
            sp, tp = self.s_info.stages[s].module, self.t_info.stages[t].module
            if self.s_shapes[sp][-2:] != self.t_shapes[tp][-2:]:
                raise KdzooError(
                    f"torchdistill adapter: AT pair student {sp} {self.s_shapes[sp][-2:]} / teacher {tp} "
                    f"{self.t_shapes[tp][-2:]} differ in size; torchdistill's ATLoss does not resample"
                )
            sp, tp = self.student_map(s), self.teacher_map(t)
            pairs[f"pair{i}"] = {"student": {"io": "output", "path": sp}, "teacher": {"io": "output", "path": tp}}
            pairs[f"pair{i}"]["weight"] = 1
            self.s_hooks.add(sp)
            self.t_hooks.add(tp)
        self.terms["at"] = {
            "criterion": {"key": "ATLoss", "kwargs": {"at_pairs": pairs, "mode": "code"}},
            "weight": self.weights["at"],
        }

    def embeddings(self) -> tuple[str, str]:
        s, t = _embedding_paths(self.s_embed, self.t_embed)
        s, t = self.s_prefix + s, self.t_prefix + t
        self.s_hooks.add(s)
        self.t_hooks.add(t)
        return s, t

    def rkd(self) -> None:
        s, t = self.embeddings()
        kwargs = {"student_output_path": s, "teacher_output_path": t, "reduction": "mean"}
        kwargs |= {"dist_factor": self.weights["rkd_distance"], "angle_factor": self.weights["rkd_angle"]}
        self.terms["rkd"] = {"criterion": {"key": "RKDLoss", "kwargs": kwargs}, "weight": 1.0}

    def pkt(self) -> None:
        s, t = self.embeddings()
        paths = {"student_module_path": s, "student_module_io": "output"}
        paths |= {"teacher_module_path": t, "teacher_module_io": "output"}
        self.terms["pkt"] = {"criterion": {"key": "PKTLoss", "kwargs": paths}, "weight": self.weights["pkt"]}

    def same_size(self, what: str, student_path: str, teacher_path: str) -> None:
        s, t = self.s_shapes[student_path][-2:], self.t_shapes[teacher_path][-2:]
        if s != t:
            raise KdzooError(
                f"torchdistill adapter: {what} pair student {student_path} {s} / teacher {teacher_path} {t} "
                "differ in size; torchdistill's loss does not resample"
            )

    def sp(self) -> None:
        """``SPKDLoss`` on the last stages; its rows are L1-normalised where kdzoo follows the paper's L2
        (docs/differences-from-torchdistill.md): the cost is the same, the value is not."""
        objective = _kdzoo_objective(["sp"], self.teacher, self.student, int(self.x.shape[-1]))
        s, t = self.student_map(objective.taps.student[0]), self.teacher_map(objective.taps.teacher[0])
        self.s_hooks.add(s)
        self.t_hooks.add(t)
        kwargs = {"student_output_path": s, "teacher_output_path": t, "reduction": "batchmean"}
        self.terms["sp"] = {"criterion": {"key": "SPKDLoss", "kwargs": kwargs}, "weight": self.weights["sp"]}

    def cc(self) -> None:
        """``CCKDLoss`` on kdzoo's linear embeddings, L2-normalised as kdzoo does (so the kernels are
        equal); torchdistill does not square the norm: its term is ``sqrt(kdzoo's) / B``."""
        from kdzoo.library import method_config

        config = method_config("cc")
        _, modules = self.kdzoo_modules("cc")
        s, t = self.embeddings()
        self.s_modules |= {"cc__student_embed": modules["student_embed"]}
        self.s_modules |= {"cc__student_unit": _Unit(modules["student_embed"])}
        self.t_modules |= {"cc__teacher_embed": modules["teacher_embed"]}
        self.t_modules |= {"cc__teacher_unit": _Unit(modules["teacher_embed"])}
        self.s_steps.append(lambda io, m: m["cc__student_unit"](io[s]["output"].flatten(1)))
        self.t_steps.append(lambda io, m: m["cc__teacher_unit"](io[t]["output"].flatten(1)))
        self.s_hooks.add("method.cc__student_unit")
        self.t_hooks.add("method.cc__teacher_unit")
        kwargs = {"student_linear_path": "method.cc__student_unit", "teacher_linear_path": "method.cc__teacher_unit"}
        kwargs |= {"kernel_config": {"type": "gaussian", "gamma": config.gamma, "max_p": config.order}}
        self.terms["cc"] = {
            "criterion": {"key": "CCKDLoss", "kwargs": {**kwargs, "reduction": "batchmean"}},
            "weight": self.weights["cc"],
        }

    def vid(self) -> None:
        """``VIDLoss`` on kdzoo's regressors (one per inner stage pair, VID's default pairing)."""
        from kdzoo.api import pair_inner_stages

        _, modules = self.kdzoo_modules("vid")
        regressors = modules["regressors"]
        self.s_modules["vid__regressors"] = regressors
        self.s_modules["vid__outputs"] = nn.ModuleList(_VIDOutput(r) for r in regressors)
        pairs = {}
        for i, (s, t) in enumerate(pair_inner_stages(self.t_info, self.s_info)):
            self.same_size("VID", self.s_info.stages[s].module, self.t_info.stages[t].module)
            sp, tp = self.student_map(s), self.teacher_map(t)
            self.s_steps.append(lambda io, m, i=i, sp=sp: m["vid__outputs"][i](io[sp]["output"]))
            self.s_hooks |= {sp, f"method.vid__outputs.{i}"}
            self.t_hooks.add(tp)
            pairs[f"pair{i}"] = {"student": {"io": "output", "path": f"method.vid__outputs.{i}"}, "weight": 1}
            pairs[f"pair{i}"]["teacher"] = {"io": "output", "path": tp}
        self.terms["vid"] = {
            "criterion": {"key": "VIDLoss", "kwargs": {"feature_pairs": pairs}},
            "weight": self.weights["vid"],
        }

    def dist_plus(self) -> None:
        """``DISTPlusLoss`` on kdzoo's projector output; torchdistill adds the channel *correlation*
        where kdzoo adds ``1 -`` it: the totals differ by ``channel_weight (1 - 2 kdzoo's term)``."""
        from kdzoo.library import method_config

        config = method_config("dist_plus")
        objective, modules = self.kdzoo_modules("dist_plus")
        s, t = self.student_map(objective.taps.student[0]), self.teacher_map(objective.taps.teacher[0])
        self.same_size("DIST+", s[len(self.s_prefix) :], t[len(self.t_prefix) :])
        self.s_modules["dist_plus__projector"] = modules["projector"]
        self.s_steps.append(lambda io, m: m["dist_plus__projector"](io[s]["output"]))
        self.s_hooks |= {s, "method.dist_plus__projector"}
        self.t_hooks.add(t)
        kwargs = {
            "student_logit_module_path": ".",
            "student_logit_module_io": "output",
            "teacher_logit_module_path": ".",
            "teacher_logit_module_io": "output",
            "student_feature_module_path": "method.dist_plus__projector",
            "student_feature_module_io": "output",
            "teacher_feature_module_path": t,
            "teacher_feature_module_io": "output",
            "beta": self.weights["dist_inter"],
            "gamma": self.weights["dist_intra"],
            "iota": self.weights["dist_channel"],
            "kappa": self.weights["dist_spatial"],
            "tau": config.tau,
        }
        self.terms["dist_plus"] = {"criterion": {"key": "DISTPlusLoss", "kwargs": kwargs}, "weight": 1.0}

    def ft(self) -> None:
        """FT's main stage (the one the bench times): ``FTLoss`` between kdzoo's translator on the
        student's last map and the factor of kdzoo's (frozen) paraphraser on the teacher's."""
        objective, modules = self.kdzoo_modules("ft")
        s_index, t_index = objective.taps.student[0], objective.taps.teacher[0]
        self.same_size("FT", self.s_info.stages[s_index].module, self.t_info.stages[t_index].module)
        s, t = self.student_map(s_index), self.teacher_map(t_index)
        self.s_modules["ft__translator"] = modules["translator"]
        self.t_modules["ft__paraphraser"] = modules["paraphraser"]
        self.s_steps.append(lambda io, m: m["ft__translator"](io[s]["output"]))

        def paraphrase(io: dict, m: nn.ModuleDict) -> None:
            with torch.no_grad():  # frozen after its stage, as in kdzoo
                m["ft__paraphraser"].encoder(io[t]["output"])

        self.t_steps.append(paraphrase)
        self.s_hooks |= {s, "method.ft__translator"}
        self.t_hooks |= {t, "method.ft__paraphraser.encoder"}
        kwargs = {"p": 1, "reduction": "mean", "paraphraser_path": "method.ft__paraphraser.encoder"}
        kwargs["translator_path"] = "method.ft__translator"
        self.terms["ft"] = {"criterion": {"key": "FTLoss", "kwargs": kwargs}, "weight": self.weights["ft"]}

    def teacher_pre_activation(self, index: int) -> tuple[str, str]:
        """The (path, io) of a teacher stage's pre-activation map for torchdistill's hooks: the input of
        the activation ending the stage (made out-of-place on this private teacher copy, so the hook
        keeps the map before the activation, as kdzoo's pre-activation taps copy it), or the stage's
        output when it ends in none."""
        from kdzoo.engine.preact import last_activation

        stage_path = self.t_info.stages[index].module
        act = last_activation(self.teacher.get_submodule(stage_path))
        if act is None:
            return self.t_prefix + stage_path, "output"
        act.inplace = False
        path = next(name for name, module in self.teacher.named_modules() if module is act)
        return self.t_prefix + path, "input"

    def reviewkd(self) -> None:
        """Each fused level (kdzoo's ABF copies, run deep to shallow in the wrapper) against the
        teacher's pre-activation map by ``HierarchicalContextLoss``; the deepest against the teacher's
        embedding as a 1 x 1 map."""
        from kdzoo.api import inner_stages, pair_stages

        _, modules = self.kdzoo_modules("reviewkd")
        levels = list(dict.fromkeys([*inner_stages(self.s_info), len(self.s_info.stages) - 1]))
        pairs = pair_stages(self.t_info, self.s_info, levels)
        s_emb, t_emb = self.embeddings()
        s_paths = [self.student_map(s) for s, _ in pairs]
        sizes = [(1, 1), *(self.t_shapes[self.t_info.stages[t].module][-2:] for _, t in reversed(pairs))]
        self.s_modules["reviewkd__fusions"] = modules["fusions"]
        self.t_modules["reviewkd__embedding_map"] = _AsMap()
        self.s_hooks |= set(s_paths)

        def review(io: dict, m: nn.ModuleDict) -> None:
            levels = [io[s_emb]["output"].flatten(1)[:, :, None, None], *(io[p]["output"] for p in reversed(s_paths))]
            residual = None
            for fusion, level, size in zip(m["reviewkd__fusions"], levels, sizes, strict=True):
                _, residual = fusion(level, residual, tuple(size))

        self.s_steps.append(review)
        self.t_steps.append(lambda io, m: m["reviewkd__embedding_map"](io[t_emb]["output"]))
        targets = [("method.reviewkd__embedding_map", "output")]
        targets += [self.teacher_pre_activation(t) for _, t in reversed(pairs)]
        self.t_hooks.add("method.reviewkd__embedding_map")
        for k, (path, io) in enumerate(targets):
            (self.t_input_hooks if io == "input" else self.t_hooks).add(path)
            kwargs = {"student_module_path": f"method.reviewkd__fusions.{k}", "student_module_io": "output"}
            kwargs |= {"teacher_module_path": path, "teacher_module_io": io}
            self.s_hooks.add(f"method.reviewkd__fusions.{k}")
            self.terms[f"reviewkd{k}"] = {
                "criterion": {"key": "HierarchicalContextLoss", "kwargs": kwargs},
                "weight": self.weights["reviewkd"],
            }

    def ickd(self) -> None:
        from kdzoo.library import method_config

        objective, modules = self.kdzoo_modules("ickd")
        s, t = self.student_map(objective.taps.student[0]), self.teacher_map(objective.taps.teacher[0])
        self.s_modules["ickd__embed"] = modules["embed"]
        self.s_steps.append(lambda io, m: m["ickd__embed"](io[s]["output"], tuple(io[s]["output"].shape[-2:])))
        self.s_hooks |= {s, "method.ickd__embed"}
        self.t_hooks.add(t)
        pair = {"student": {"io": "output", "path": "method.ickd__embed"}, "teacher": {"io": "output", "path": t}}
        # ChSimLoss divides by C B^2, kdzoo (the authors' CIFAR code) by C B
        batch = int(self.x.shape[0])
        self.terms["ickd"] = {
            "criterion": {"key": "ChSimLoss", "kwargs": {"feature_pairs": {"pair1": {**pair, "weight": 1}}}},
            "weight": self.weights["ickd"] * batch,
        }
        config = method_config("ickd")
        if config.kd_weight:
            self.terms["ickd_kd"] = self.bare_kl(config.temperature, self.weights["kd"])

    def srd(self) -> None:
        from kdzoo.library import method_config

        config = method_config("srd")
        kl_weight = self.weights["kd"] * config.temperature**2  # SRDLoss: 2 * feature term + KL without T^2
        if self.weights["srd"] != 2 * kl_weight:
            raise KdzooError("torchdistill adapter: SRDLoss weighs its feature term 2x its KL; kdzoo's weights differ")
        _, modules = self.kdzoo_modules("srd")
        s, t = self.embeddings()
        self.s_modules |= {"srd__projector": modules["projector"], "srd__student_norm": modules["student_norm"]}
        self.t_modules["srd__teacher_norm"] = modules["teacher_norm"]
        self.s_steps.append(lambda io, m: m["srd__student_norm"](m["srd__projector"](io[s]["output"].flatten(1))))
        self.t_steps.append(lambda io, m: m["srd__teacher_norm"](io[t]["output"].flatten(1)))
        self.s_hooks.add("method.srd__student_norm")
        self.t_hooks.add("method.srd__teacher_norm")
        kwargs = {"student_feature_module_path": "method.srd__student_norm", "student_feature_module_io": "output"}
        kwargs |= {"teacher_feature_module_path": "method.srd__teacher_norm", "teacher_feature_module_io": "output"}
        kwargs |= {
            f"{side}_linear_module_{key}": v
            for side in ("student", "teacher")
            for key, v in (("path", "."), ("io", "output"))
        }
        kwargs |= {"exponent": config.exponent, "temperature": config.temperature, "reduction": "batchmean"}
        self.terms["srd"] = {"criterion": {"key": "SRDLoss", "kwargs": kwargs}, "weight": kl_weight}

    def skd(self) -> None:
        """In the ``code`` form torchdistill masks each sample's KL where the authors' code (and kdzoo)
        scales the batch's KL by the masked fraction: the instance term's value differs by design."""
        from kdzoo.library import method_config

        config = method_config("skd")
        kwargs = {**self.logit_paths(), "mode": config.form}
        self.terms["skd_instance"] = {
            "criterion": {"key": "SKDInstanceLoss", "kwargs": {**kwargs, "temperature": config.temperature}},
            "weight": self.weights["skd_instance"],
        }
        self.terms["skd_direction"] = {
            "criterion": {"key": "SKDDirectionLoss", "kwargs": {**kwargs, "tikhonov": config.tikhonov}},
            "weight": self.weights["skd_direction"],
        }

    def pad(self) -> None:
        """PAD's distilling stage (the one the bench times): PADL2Loss on the mapped embedding."""
        from kdzoo.library import method_config

        _, modules = self.kdzoo_modules("pad")
        s, t = self.embeddings()
        self.s_modules |= {"pad__regressor": modules["regressor"], "pad__variance": modules["variance"]}

        def secondary(io: dict, m: nn.ModuleDict) -> None:
            z = io[s]["output"].flatten(1)
            m["pad__regressor"](z)
            m["pad__variance"](z)

        self.s_steps.append(secondary)
        self.s_hooks |= {"method.pad__regressor", "method.pad__variance"}
        kwargs = {"student_embed_module_path": "method.pad__regressor", "teacher_embed_module_path": t}
        kwargs |= {"module_path": "method.pad__variance", "eps": method_config("pad").eps, "reduction": "mean"}
        self.terms["pad"] = {"criterion": {"key": "PADL2Loss", "kwargs": kwargs}, "weight": self.weights["pad"]}

    def logit_terms(self) -> None:
        from kdzoo.library import method_config

        ce = self.weights.get("ce", 0.0)
        if "kd" in self.names:
            t = method_config("kd").temperature
            if ce:  # KDLoss = alpha * CE + beta * T^2 * KL: it carries the ce term
                kwargs = {**self.logit_paths(), "temperature": t, "alpha": ce, "beta": self.weights["kd"]}
                self.terms = {"kd": {"criterion": {"key": "KDLoss", "kwargs": kwargs}, "weight": 1.0}, **self.terms}
            else:
                self.terms["kd"] = self.bare_kl(t, self.weights["kd"])
        if "dist" in self.names:  # DISTLoss = beta * inter + gamma * intra, with tau^2 inside each
            kwargs = {**self.logit_paths(), "tau": method_config("dist").tau}
            kwargs |= {"beta": self.weights["dist_inter"], "gamma": self.weights["dist_intra"]}
            self.terms["dist"] = {"criterion": {"key": "DISTLoss", "kwargs": kwargs}, "weight": 1.0}
        if ce and "kd" not in self.names:
            self.terms["ce"] = _wrapped_term("CrossEntropyLoss", ".", {"uses_label": True}, ce)

    def model_config(
        self, hooks: set[str], modules: dict, steps: list, extra: dict[str, Any], input_hooks: set[str] = frozenset()
    ) -> dict[str, Any]:
        config = {"forward_proc": "forward_batch_only", **extra}
        if modules:
            config["auxiliary_model_wrapper"] = {"key": WRAPPER_KEY, "kwargs": {"modules": modules, "steps": steps}}
        if hooks or input_hooks:
            config["forward_hook"] = {"input": sorted(input_hooks), "output": sorted(hooks)}
        return config

    def build(self, lr: float) -> dict[str, Any]:
        from kdzoo.config import OptimConfig, TrainConfig

        for name in self.names:
            if name not in ("kd", "dist"):
                getattr(self, name)()
        self.logit_terms()
        optim = OptimConfig(lr=lr)
        sgd = {"lr": optim.lr, "momentum": optim.momentum, "weight_decay": optim.weight_decay}
        return {
            "num_epochs": 1,
            "teacher": self.model_config(
                self.t_hooks, self.t_modules, self.t_steps, {"requires_grad": False}, self.t_input_hooks
            ),
            "student": self.model_config(self.s_hooks, self.s_modules, self.s_steps, {"requires_grad": True}),
            "optimizer": {"key": "SGD", "kwargs": {**sgd, "nesterov": optim.nesterov}},
            # kdzoo_step's schedule: cosine over the default epochs of one batch each, stepped per batch
            "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": TrainConfig().epochs}, "scheduling_step": 1},
            "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": self.terms}},
        }


def torchdistill_config(
    stack: str, teacher: nn.Module, student: nn.Module, x: Tensor, lr: float = 0.01
) -> dict[str, Any]:
    """The DistillationBox ``train_config`` for ``stack`` on these models (kdzoo's settings).

    For ``reviewkd`` the activations ending the teacher's tapped stages are made out-of-place, so pass
    the copy of the teacher torchdistill will run (as :func:`torchdistill_step` does)."""
    if not torchdistill_supports(stack):
        have = ", ".join(sorted(TORCHDISTILL_METHODS))
        raise KdzooError(f"torchdistill adapter: no equivalent for '{stack}' (have {have}, each once)")
    return _ConfigBuilder(stack.split("+"), teacher, student, x).build(lr)
