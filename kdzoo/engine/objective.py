"""The distillation objective: active methods + taps + method modules -> one weighted loss.

This is the part of kdzoo a user can drop into their own training loop::

    kd = kdzoo.get_method("at", teacher=teacher, student=student)   # an nn.Module
    loss = kd(images, labels)                                      # instead of F.cross_entropy(...)

The engine uses the same object for every step, so the library and the CLI compute the same loss.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.api import (
    INPUT_VIEW,
    WHOLE_RUN,
    Batch,
    KdzooError,
    MethodInfo,
    ModelInfo,
    Outputs,
    Stage,
    StepResult,
    Taps,
    TrainingSet,
    View,
    When,
    full_precision,
    union,
)
from kdzoo.data.batches import DistInfo
from kdzoo.data.inputs import RunInputs
from kdzoo.engine.extract import FeatureExtractor, LazyOutputs, describe, device_of, model_name, named_forward
from kdzoo.engine.global_batch import GlobalBatch, map_outputs, views_of_global_batch
from kdzoo.engine.hooks import Implementation, RunHooks
from kdzoo.engine.teacher import Teacher
from kdzoo.errors import close_matches, first_line

CE = "ce"
RESERVED_TERMS = {"loss", "weights", "images_per_s"}  # names the metrics records use themselves


def check_compile_backend(name: str) -> None:
    """One line, before anything trains, when ``torch.compile`` has no backend ``name``."""
    import torch._dynamo

    every = torch._dynamo.list_backends(exclude_tags=())  # the debugging ones too, which the line leaves unnamed
    if name not in every:
        raise KdzooError(
            f"config key 'train.compile_backend': torch.compile has no backend '{name}'{close_matches(name, every)}; "
            f"it has {', '.join(torch._dynamo.list_backends())} (and debugging ones, e.g. aot_eager)"
        )


class Objective(nn.Module):
    """The weighted sum of the core's ``ce`` and every active method's loss terms.

    Owns the run-scoped plugin manager, the union of the methods' taps (one forward per model per
    step) and the methods' trainable modules (``self.method_modules[method][name]``). The teacher is held
    outside the module tree, so ``objective.parameters()`` are exactly the method modules'.
    """

    def __init__(
        self,
        methods: dict[str, object],
        student: nn.Module,
        student_info: ModelInfo,
        teacher: nn.Module | None = None,
        teacher_info: ModelInfo | None = None,
        train_set: TrainingSet | None = None,
        infos: dict[str, MethodInfo] | None = None,
        teacher_members: int = 0,
    ):
        super().__init__()
        self.methods = methods
        #: what each method declared when it registered (what its terms see, their names, their precision)
        self.infos: dict[str, MethodInfo] = dict(infos or {})
        #: each method's declared terms (``None``: undeclared, or a function of a config not given here)
        self.declared: dict[str, tuple[str, ...] | None] = {
            name: None if callable(info.terms) else info.terms for name, info in self.infos.items()
        }
        _check_declared_terms(self.declared)
        self.hooks = RunHooks(methods)  #: the selected methods' hooks, called in selection order
        for name, plan in self.hooks.results("kdzoo_plan", teacher=teacher_info, student=student_info):
            self.hooks.own.setdefault(name, {})["plan"] = plan
        self.student_info = student_info
        method_taps = self.hooks.results("kdzoo_feature_taps", teacher=teacher_info, student=student_info)
        self.taps: Taps = union(taps for _, taps in method_taps)
        #: several teachers (``teachers:``): the teacher is their ensemble, each member's logits one of its
        #: stages, always tapped (:mod:`kdzoo.engine.ensemble`); 0: one teacher
        self.teacher_members = teacher_members
        if teacher_members:
            _refuse_teacher_taps(method_taps)
            self.taps = dataclasses.replace(self.taps, teacher=tuple(range(teacher_members)))
        self.views: list[View] = []  # extra views of each image, stacked after the batch
        self.view_methods: set[str] = set()  # the methods that asked for them (and see the whole stack)
        for name in methods:
            for view in self.call_one(name, "kdzoo_views", student=student_info) or ():
                self.view_methods.add(name)
                if view.name == INPUT_VIEW:
                    raise KdzooError(f"method '{name}': view name '{INPUT_VIEW}' is the batch itself; rename the view")
                if view.name not in {v.name for v in self.views}:
                    self.views.append(view)
        #: under torchrun, the processes whose shares make the global batch (:meth:`distribute`)
        self.processes = DistInfo()
        self.input_dtype: torch.dtype | None = None  # the models' dtype when not the batches' (to_dtype)
        self.label_smoothing = 0.0  #: the core ``ce``'s (``train.label_smoothing``; set by the run builder)
        self.method_modules = nn.ModuleDict()
        for name in methods:
            built = self.call_one(
                name, "kdzoo_build_modules", teacher=teacher_info, student=student_info, train_set=train_set
            )
            self.method_modules[name] = nn.ModuleDict(built or {})
            self.hooks.own.setdefault(name, {})["modules"] = self.method_modules[name]
        self.student_tap = FeatureExtractor(
            student,
            student_info,
            self.taps.student,
            self.taps.student_embedding,
            preact=self.taps.student_preact,
            distillation_head=self.taps.student_distillation_head,
        )
        self.teacher_side = Teacher(self.taps)  #: where the teacher's outputs come from
        if teacher is not None:
            self.set_teacher(teacher, teacher_info or describe(teacher, model_name(teacher), student_info.img_size))
        elif teacher_info is not None:
            self.teacher_side.info = teacher_info  # known from a teacher-output cache, the model not built

    def distribute(self, processes: DistInfo) -> None:
        """Train as one of ``processes``, each on its share of every global batch: views are made
        for the global batch, and a method whose :attr:`~kdzoo.api.MethodInfo.batch` is ``"global"``
        (a method that declared nothing included) sees the outputs of the global batch."""
        self.processes = processes

    def to_dtype(self, dtype: torch.dtype) -> None:
        """Every model and method module in floating-point ``dtype``; batches and cached teacher
        outputs are cast to it at each step (``train.precision=fp64``)."""
        self.student_tap.model.to(dtype)
        if self.teacher is not None:
            self.teacher.to(dtype)
        self.to(dtype)
        self.input_dtype = dtype

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher model, or ``None`` (no teacher, or its outputs come from a cache)."""
        return self.teacher_side.model

    @property
    def teacher_info(self) -> ModelInfo | None:
        return self.teacher_side.info

    @property
    def teacher_tap(self) -> FeatureExtractor | None:
        return self.teacher_side.tap

    def set_teacher(self, model: nn.Module, info: ModelInfo, by_method: str | None = None) -> None:
        """Freeze ``model`` and make it the teacher from the next step on (``by_method``: the name a
        method gave the teacher it set, saved with the run)."""
        device = device_of(self.student_tap.model, "student")
        if by_method is None:
            self.teacher_side.use_model(model, info, device)
        else:
            self.teacher_side.set_by_method(model, info, by_method, device)
        self.hooks.call("kdzoo_on_teacher", teacher=model, info=info)

    def use_inputs(self, inputs: RunInputs) -> None:
        """Each model its own input (:mod:`kdzoo.data.inputs`): the training batches are drawn at
        ``inputs.render``; the student's and the teacher's inputs are made from them on the device."""
        from kdzoo.data.inputs import adapter

        render, side = inputs.render, self.teacher_side
        self.student_tap.prepare = adapter(render, inputs.student)
        side.prepare, side.student_prepare = adapter(render, inputs.teacher), self.student_tap.prepare
        if side.tap is not None:
            side.tap.prepare = side.student_prepare if side.method_name is not None else side.prepare

    def close(self) -> None:
        """Remove the forward hooks the extractors put on models without native taps."""
        self.student_tap.close()
        self.teacher_side.close()

    def compile(self, mode: str = "default", backend: str = "inductor") -> None:
        """``torch.compile`` the teacher's and student's tapped forward passes."""
        self.student_tap.compile(mode, backend)
        self.teacher_side.compile(mode, backend)

    def compile_objective(self, mode: str = "default", backend: str = "inductor") -> None:
        """``torch.compile`` the per-step work between the models' forward passes and the backward
        pass: every method's terms and their weighted sum, fused into few kernels (at small steps
        each eager op costs a kernel launch). Host syncs inside a method (a Python ``int()`` of a
        tensor) split the graph there, correctly; a compile that fails falls back to eager with one
        line (:meth:`_losses`)."""
        self._compiled = torch.compile(self._weighted_terms, mode=mode, backend=backend)

    def _losses(self, student_out: LazyOutputs, *rest) -> tuple[Tensor, dict[str, Tensor]]:
        compiled = getattr(self, "_compiled", None)
        if compiled is None:
            return self._weighted_terms(student_out, *rest)
        args = (student_out.resolved(), *rest)  # the compiled terms take plain tensors, not a forward to run
        try:
            return compiled(*args)
        except KdzooError:
            raise
        except Exception as exc:  # the backend, not the methods: eager computes the same terms
            del self._compiled
            reason = first_line(exc) or type(exc).__name__
            warnings.warn(
                f"train.compile_objective: torch.compile failed ({reason}); the objective runs eagerly", stacklevel=2
            )
            return self._weighted_terms(*args)

    def _weighted_terms(self, student_out, teacher_out, targets, stage, indices, views, weights, soft_targets=None):
        terms = self.terms(student_out, teacher_out, targets, stage, indices, views, soft_targets)
        # each term times its weight, summed in order: a weight of 1 multiplies nothing, and the sum
        # starts from the first term, not from 0 (both exact: the same total, two kernels fewer)
        weighted = [value if (w := weights.get(name, 1.0)) == 1.0 else w * value for name, value in terms.items()]
        total = sum(weighted[1:], weighted[0]) if weighted else 0
        return total, terms

    def deployed_model(self) -> nn.Module:
        """What training produces to deploy: the student, or the network a method builds around it
        (:meth:`~kdzoo.hookspecs.MethodSpec.kdzoo_deployed_model`), sharing its parameters."""
        if getattr(self, "_deployed", None) is None:
            student = self.student_tap.model
            built = {}
            for name in self.methods:
                model = self.call_one(name, "kdzoo_deployed_model", student=student, modules=self.method_modules[name])
                if model is not None:
                    built[name] = model
            if len(built) > 1:
                raise KdzooError(f"methods {sorted(built)} each change the deployed student; they cannot be stacked")
            #: the method that changed the deployed network, if any
            self.deploying: str | None = next(iter(built), None)
            network = built[self.deploying] if self.deploying is not None else student
            self._deployed = [network]  # a list: not a submodule of the objective
        return self._deployed[0]

    @property
    def pm(self) -> RunHooks:
        """The run's hooks (``register`` an observer on them); the name of 0.1.0's plugin manager."""
        return self.hooks

    def call_one(self, method: str, hook: str, **kwargs: Any) -> Any:
        """Call ``hook`` on one method only (for results that must be attributed to it)."""
        return self.hooks.call_one(method, hook, **kwargs)

    def schedule(self, epochs: int) -> list[Stage]:
        stages = self.hooks.first("kdzoo_schedule", epochs=epochs, teacher=self.teacher_info, student=self.student_info)
        return stages if stages is not None else [Stage("train", epochs)]  # no method schedules: one stage

    def loss_weights(self, stage: Stage, epoch: int, progress: float) -> dict[str, float]:
        weights: dict[str, float] = {}
        arguments = {"stage": stage, "epoch": epoch, "progress": progress}
        for impl in self._implementations("kdzoo_loss_weights"):
            for name, value in (self._call(impl, "kdzoo_loss_weights", arguments) or {}).items():
                weights.setdefault(name, float(value))  # the first selected method wins
        return weights

    # the two hooks of every step are called here rather than through RunHooks.call: their
    # implementations were found once, and a step you follow reads the call itself
    def _implementations(self, hook: str) -> list[Implementation]:
        found = self.hooks.found.get(hook)  # a listener registered since then clears it
        return self.hooks.implementations(hook) if found is None else found

    def _call(self, impl: Implementation, hook: str, arguments: dict[str, Any]) -> Any:
        """``impl`` with the arguments it asks for, its own method's plan and modules among them."""
        given = {**arguments, **self.hooks.own.get(impl.owner, {})}
        try:
            return impl.function(*[given[a] for a in impl.arguments])
        except KdzooError:
            raise
        except Exception as exc:  # one line naming the method, as for every other hook
            raise self.hooks.failure(impl, hook, exc) from exc

    def check_weights(self, stages: list[Stage]) -> None:
        """A weight a method gives a term that no method returns (a typo, a renamed term) is one line
        when the run is built, for methods that declare their terms (:attr:`MethodInfo.terms`)."""
        declared = {term for terms in self.declared.values() for term in terms or ()}
        if any(terms is None for terms in self.declared.values()) or len(self.declared) < len(self.methods):
            return  # some method's terms are unknown until it computes them
        for stage in stages:
            for method in self.methods:
                weights = self.call_one(method, "kdzoo_loss_weights", stage=stage, epoch=0, progress=0.0) or {}
                stray = sorted(set(weights) - declared - {CE})
                if stray:
                    raise KdzooError(
                        f"method '{method}' weights term(s) {', '.join(stray)} that no selected method returns "
                        f"(stage '{stage.name}'); the terms are {', '.join(sorted(declared | {CE}))}"
                    )

    def weight_conflicts(self, stages: list[Stage]) -> list[str]:
        """Lines naming each term two stacked methods weight differently at the start of a stage (the
        core's ``ce`` most often): the first selected method's weight is the one used, and the
        others' are not, which a user who set one of them must be told."""
        lines = []
        for stage in stages:
            given: dict[str, list[tuple[str, float]]] = {}
            for method in self.methods:
                weights = self.call_one(method, "kdzoo_loss_weights", stage=stage, epoch=0, progress=0.0) or {}
                for term, value in weights.items():
                    given.setdefault(term, []).append((method, float(value)))
            for term, by in given.items():
                if len({value for _, value in by}) > 1:
                    (first, used), rest = by[0], by[1:]
                    unused = ", ".join(f"{method}'s {value:g}" for method, value in rest if value != used)
                    line = (
                        f"term '{term}': weight {used:g} from {first} (the first method selected), not {unused}; "
                        f"put the method whose weight you want first"
                    )
                    if line not in lines:
                        lines.append(line)
        return lines

    def terms(
        self,
        student: Outputs,
        teacher: Outputs | None,
        targets: Tensor,
        stage: Stage,
        indices: Tensor | None = None,
        views: dict[str, slice] | None = None,
        soft_targets: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Unweighted terms from given outputs (for when you ran the models yourself); ``indices``
        are the samples' positions in the training set, for methods that keep per-sample state;
        ``views`` the rows of each view when the outputs cover a stack of views (:meth:`stack_views`);
        ``soft_targets`` the targets as distributions when the batch was mixed (the ``ce`` term's)."""
        views = views or {INPUT_VIEW: slice(0, len(targets))}
        if indices is not None:
            indices = indices.to(targets.device, non_blocking=True)
        share = _MethodInputs(student, teacher, targets, indices, views, stage, soft_targets, self.teacher_members)
        whole = None  # the global batch under torchrun, gathered when a method that sees it is called
        terms: dict[str, Tensor] = {}
        if stage.term_on(CE):
            terms[CE] = self._cross_entropy(share.alone["student"].logits, targets, soft_targets)
        # under autocast a method's terms are computed in float32 from upcast outputs, unless it opted in
        in_float32 = torch.is_autocast_enabled(targets.device.type)
        # called one implementation at a time, in selection order, so that a bad result names its method
        for impl in self._implementations("kdzoo_compute_losses"):
            info = self.infos.get(impl.owner)
            terms_of = self.declared.get(impl.owner)
            if terms_of is not None and not any(stage.term_on(t) for t in terms_of):
                continue  # every term it declared is off in this stage
            given = share
            if self.processes.enabled and (info is None or info.batch != "local"):
                if whole is None:
                    batch = GlobalBatch(self.processes, student, teacher, targets, indices, views, soft_targets)
                    whole = _MethodInputs.gathered(batch, stage, self.teacher_members)
                given = whole
            arguments = given.stacked if impl.owner in self.view_methods else given.alone
            if in_float32 and not (info is not None and info.autocast):
                with torch.autocast(targets.device.type, enabled=False):
                    result = self._call(impl, "kdzoo_compute_losses", _in_float32(arguments))
            else:
                result = self._call(impl, "kdzoo_compute_losses", arguments)
            for name, value in _checked_terms(impl.owner, result).items():
                if terms_of is not None and name not in terms_of:
                    raise KdzooError(
                        f"method '{impl.owner}' returned loss term '{name}', which its MethodInfo.terms "
                        f"({', '.join(terms_of)}) does not declare; declare it"
                    )
                if name in RESERVED_TERMS:
                    raise KdzooError(f"loss term name '{name}' is reserved by the core; rename the method's term")
                if name in terms:
                    raise KdzooError(f"loss term '{name}' is produced by two active methods; they cannot be stacked")
                if stage.term_on(name):
                    terms[name] = value
        return terms

    def _cross_entropy(self, logits: Tensor, targets: Tensor, soft_targets: Tensor | None) -> Tensor:
        """The core's ``ce``: against the soft targets of a mixed batch (timm's SoftTargetCrossEntropy;
        smoothed when they were made), else the labels, smoothed by ``train.label_smoothing``."""
        if soft_targets is not None:
            return torch.sum(-soft_targets.to(logits.dtype) * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def loss(self, batch: Batch, when: When = When()) -> StepResult:
        """The objective's one computation: both models' forward passes (the teacher's not at all when
        ``batch.teacher`` holds its outputs, e.g. from a teacher-output cache; the student's only when a
        term reads it), every term of ``when.stage`` and their weighted sum."""
        x, teacher_out = self._in_precision(batch.inputs, batch.teacher)
        x, views = self.stack_views(x)
        if teacher_out is not None and len(views) > 1:
            raise KdzooError("teacher outputs given for one view, but the methods train on several views of each image")
        # the teacher first: its forward's transient activations are then gone before the student's
        # saved ones pile up, so the step's memory peak is the student's alone
        supply = self.teacher_side.supply  # the live model's frozen forward or the cache: chosen when it was set
        if teacher_out is None and supply is not None:
            teacher_out = supply(x, batch.indices, batch.view)
        # run when a term first reads it: a stage training a teacher-side module alone never does
        student_out = LazyOutputs(
            lambda: named_forward(f"student ({self.student_info.name})", lambda: self.student_tap(x), x)
        )
        weights = self.loss_weights(when.stage, when.epoch, when.progress)
        total, terms = self._losses(
            student_out, teacher_out, batch.labels, when.stage, batch.indices, views, weights, batch.soft_targets
        )
        logits = student_out.logits[: len(batch.labels)].detach() if student_out.computed else None
        return StepResult(total, terms, weights, logits)

    def _in_precision(self, x: Tensor, teacher_out: Outputs | None) -> tuple[Tensor, Outputs | None]:
        """The batch (and cached teacher outputs) in the models' dtype when it is not the batches'
        (``train.precision=fp64``, :meth:`to_dtype`)."""
        dtype = self.input_dtype
        if dtype is None or not x.is_floating_point() or x.dtype == dtype:
            return x, teacher_out
        return x.to(dtype), None if teacher_out is None else map_outputs(teacher_out, lambda t: t.to(dtype))

    def compute(
        self,
        x: Tensor,
        targets: Tensor,
        stage: Stage = WHOLE_RUN,
        epoch: int = 0,
        progress: float = 0.0,
        teacher_out: Outputs | None = None,
        indices: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, float]]:
        """:meth:`loss` as (total loss, unweighted terms, weights), for hand-written loops."""
        result = self.loss(Batch(x, targets, indices, teacher_out), When(stage, epoch, progress))
        assert result.loss is not None  # only a step skipped as non-finite has none
        return result.loss, result.terms, result.weights

    def stack_views(self, x: Tensor) -> tuple[Tensor, dict[str, slice]]:
        """The batch followed by each view the methods asked for, and the rows of each."""
        n = x.shape[0]
        rows = {INPUT_VIEW: slice(0, n)}
        if not self.views:
            return x, rows
        for i, view in enumerate(self.views, start=1):
            rows[view.name] = slice(i * n, (i + 1) * n)
        return torch.cat([x, *(views_of_global_batch(x, view.make, self.processes) for view in self.views)]), rows

    def forward(
        self, x: Tensor, targets: Tensor, epoch: int = 0, progress: float = 0.0, indices: Tensor | None = None
    ) -> Tensor:
        """The total loss for a batch. Pass ``epoch`` (from 0) and ``progress`` (0..1 over training)
        for methods whose weights ramp up (warm-ups), and ``indices`` (each sample's position in the
        training set) for methods that keep per-sample state (CRD). For the unweighted terms and the
        student's logits as well, call :meth:`loss`."""
        result = self.loss(Batch(x, targets, indices), When(WHOLE_RUN, epoch, progress))
        self._last = result  # for the deprecated last_* attributes below
        assert result.loss is not None  # only a step skipped as non-finite has none
        return result.loss

    def _deprecated_last(self, field: str):
        warnings.warn(
            f"Objective.last_{field} is deprecated: call objective.loss(kdzoo.Batch(images, labels)) and read "
            f"its .{field}",
            DeprecationWarning,
            stacklevel=3,
        )
        last = getattr(self, "_last", None)
        if last is None:
            raise AttributeError(f"last_{field}: no batch has gone through forward() yet")
        return last

    @property
    def last_terms(self) -> dict[str, Tensor]:
        return {name: value.detach() for name, value in self._deprecated_last("terms").terms.items()}

    @property
    def last_weights(self) -> dict[str, float]:
        return self._deprecated_last("weights").weights

    @property
    def last_logits(self) -> Tensor | None:
        return self._deprecated_last("logits").logits


class _MethodInputs:
    """The arguments of ``kdzoo_compute_losses`` for one step: ``stacked`` for methods that asked for
    views (the outputs of the whole stack of views), ``alone`` for the others (the input's rows)."""

    def __init__(
        self, student, teacher, targets, indices, views: dict[str, slice], stage: Stage, soft_targets=None, members=0
    ):
        rows = views[INPUT_VIEW]
        common = {"targets": targets, "stage": stage, "indices": indices, "soft_targets": soft_targets}
        self.stacked = {"student": student, "teacher": teacher, "views": views, **common}
        self.stacked["teachers"] = member_outputs(teacher, members)
        if len(views) > 1:  # methods that asked for no views see the input's rows only
            student, teacher = student.rows(rows), None if teacher is None else teacher.rows(rows)
        self.alone = {"student": student, "teacher": teacher, "views": {INPUT_VIEW: slice(0, len(targets))}, **common}
        self.alone["teachers"] = member_outputs(teacher, members)

    @classmethod
    def gathered(cls, batch: GlobalBatch, stage: Stage, members: int) -> _MethodInputs:
        targets, indices, soft_targets = batch.labels_and_indices()
        return cls(batch.student, batch.teacher, targets, indices, batch.views, stage, soft_targets, members)


def member_outputs(teacher: Outputs | None, members: int) -> list[Outputs] | None:
    """Each teacher's outputs (its logits) from several teachers' ensemble, whose stages they are
    (:mod:`kdzoo.engine.ensemble`), or ``[teacher]`` for a run with one."""
    if teacher is None:
        return None
    if not members:
        return [teacher]
    return [Outputs(logits=teacher.features[k]) for k in range(members)]


def _refuse_teacher_taps(method_taps: list[tuple[str, Taps | None]]) -> None:
    """Several teachers: a method that reads a teacher's inner outputs cannot run (they differ from
    teacher to teacher, and the ensemble has none of its own)."""
    for name, taps in method_taps:
        inner = taps is not None and (
            taps.teacher or taps.teacher_embedding or taps.teacher_summaries or taps.teacher_preact
        )
        if inner:
            raise KdzooError(
                f"teachers: method '{name}' reads the teacher's feature maps or embedding, which differ from "
                "teacher to teacher; several teachers teach through their logits (logit methods, or a method "
                "taking every teacher's outputs): use one teacher for it"
            )


def _in_float32(arguments: dict[str, Any]) -> dict[str, Any]:
    """``kdzoo_compute_losses``' arguments with the models' outputs upcast to float32 (lazily: a
    stage that never reads the student still runs no student forward)."""
    upcast = dict(arguments)
    for role in ("student", "teacher"):
        out = arguments[role]
        if out is not None:
            upcast[role] = _upcast(out)
    if arguments.get("teachers") is not None:
        upcast["teachers"] = [_upcast(out) for out in arguments["teachers"]]
    return upcast


def _upcast(out: Outputs) -> LazyOutputs:
    return LazyOutputs(lambda: map_outputs(_resolved(out), full_precision))


def _resolved(out: Outputs) -> Outputs:
    return out.resolved() if isinstance(out, LazyOutputs) else out


def _check_declared_terms(declared: dict[str, tuple[str, ...] | None]) -> None:
    """Two methods declaring one term name, or a name the core keeps, is one line when the run is built."""
    owner: dict[str, str] = {}
    for name, terms in declared.items():
        for term in terms or ():
            if term in RESERVED_TERMS or term == CE:
                raise KdzooError(f"method '{name}': loss term name '{term}' is reserved by the core; rename it")
            if term in owner:
                raise KdzooError(
                    f"methods '{owner[term]}' and '{name}' both produce loss term '{term}'; they cannot be stacked"
                )
            owner[term] = name


def _checked_terms(method: str, result: Any) -> dict[str, Tensor]:
    """A method's terms, or a one-line error naming the method when it returned something else."""
    if result is None:
        return {}
    where = f"method '{method}' kdzoo_compute_losses"
    if not isinstance(result, dict):
        raise KdzooError(f"{where} returned {type(result).__name__}; return a dict of named scalar tensors")
    for name, value in result.items():
        if not isinstance(value, Tensor):
            raise KdzooError(f"{where}: term '{name}' is {type(value).__name__}, not a tensor; return a scalar tensor")
        if value.ndim != 0:
            raise KdzooError(
                f"{where}: term '{name}' has shape {tuple(value.shape)}; reduce it to a scalar (e.g. .mean())"
            )
    return result


def build_objective(
    methods: dict[str, object],
    student: nn.Module,
    teacher: nn.Module | None,
    img_size: int,
    student_name: str | None = None,
    teacher_name: str | None = None,
    train_set: TrainingSet | None = None,
    infos: dict[str, MethodInfo] | None = None,
) -> Objective:
    """An :class:`Objective` for two timm models (described from their ``feature_info``); ``infos``:
    what each method declared when it registered."""
    s_info = describe(student, student_name or model_name(student), img_size)
    t_info = None if teacher is None else describe(teacher, teacher_name or model_name(teacher), img_size)
    return Objective(methods, student, s_info, teacher, t_info, train_set, infos)
