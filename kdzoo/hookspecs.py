"""Every hook a kdzoo plugin can implement.

Two tiers (every hook with its arguments and an example: ``docs/writing-a-plugin.md``):

* :class:`DiscoverySpec` — once per process, on plugin *modules* loaded from the ``kdzoo``
  entry-point group: a module registers the methods it provides.
* :class:`MethodSpec` — per run, on *method instances* built from the run's config. Only the
  selected methods are registered, so these hooks fire for the active methods only, and two
  selected methods stack because pluggy collects every implementation's result.

Hooks are called with keyword arguments; an implementation may accept any subset of a spec's
arguments, so new arguments can be added later without breaking plugins. Mark implementations
with :data:`kdzoo.hookimpl`.

Each hook's docstring has a ``:param name:`` line per argument, and ``:when:`` and ``:returns:`` lines:
``scripts/gen_hook_docs.py`` makes the hook tables of the README and the plugin guide from them (and
from ``firstresult``), and a test fails when those tables differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy
from torch import Tensor, nn

from kdzoo.api import DatasetInfo, LoggerInfo, MethodInfo, ModelInfo, Outputs, Run, Stage, Taps, TrainingSet, View

hookspec = pluggy.HookspecMarker("kdzoo")


class DiscoverySpec:
    """The discovery tier: hooks a plugin module implements to say what it provides.

    :implemented on: the plugin **module** the entry point names
    :when: once per process, when kdzoo loads its plugins (``import kdzoo``, a ``kdzoo`` command that needs
        them, ``kdzoo.list_methods()``, ...)
    """

    @hookspec
    def kdzoo_register_methods(self, register: Callable[[MethodInfo], None]) -> None:
        """Register the methods this plugin module provides by calling ``register`` once per method.

        :param register: call it with one :class:`kdzoo.MethodInfo` (name, factory, config class, paper,
            summary) per method
        :when: once per process, when the plugins load
        :returns: nothing: the methods go through ``register``

        Example::

            @kdzoo.hookimpl
            def kdzoo_register_methods(register):
                register(kdzoo.MethodInfo(
                    name="kd", factory=HintonKD, config_class=KDConfig,
                    paper="Hinton et al., Distilling the Knowledge in a Neural Network, 2015",
                    summary="match the teacher's softened class probabilities"))
        """

    @hookspec
    def kdzoo_register_models(self, register: Callable[[Callable], Callable]) -> None:
        """Register model architectures into timm's registry (``register`` is timm's
        ``register_model``), so runs and users create them with ``timm.create_model(name)``.

        :param register: timm's ``register_model``: call it with each model function
            (``def name(pretrained=False, **kwargs) -> nn.Module``)
        :when: once per process, when the plugins load, before any model is created
        :returns: nothing: the models go through ``register``

        Example::

            @kdzoo.hookimpl
            def kdzoo_register_models(register):
                register(resnet8x4)  # def resnet8x4(pretrained=False, **kwargs) -> nn.Module
        """

    @hookspec
    def kdzoo_register_datasets(self, register: Callable[[DatasetInfo], None]) -> None:
        """Register the datasets this plugin module provides (``data.name`` selects one): call
        ``register`` once per dataset.

        :param register: call it with one :class:`kdzoo.DatasetInfo` (name, loader, summary)
        :when: once per process, when the plugins load
        :returns: nothing: the datasets go through ``register``

        Example::

            @kdzoo.hookimpl
            def kdzoo_register_datasets(register):
                register(kdzoo.DatasetInfo(name="my_scans", load=load_my_scans, summary="CT scans, 4 classes"))
        """

    @hookspec
    def kdzoo_register_loggers(self, register: Callable[[LoggerInfo], None]) -> None:
        """Register the experiment trackers this plugin module provides (``train.loggers`` selects them):
        call ``register`` once per tracker. ``metrics.jsonl`` stays the run's record; a tracker mirrors it.

        :param register: call it with one :class:`kdzoo.LoggerInfo` (name, factory, summary, requires, extra)
        :when: once per process, when the plugins load
        :returns: nothing: the trackers go through ``register``

        Example::

            @kdzoo.hookimpl
            def kdzoo_register_loggers(register):
                register(kdzoo.LoggerInfo(name="mytracker", factory=MyTracker, requires=("mytracker",)))
        """


class MethodSpec:
    """The per-run tier: hooks a method implements to take part in a run.

    :implemented on: the **method instance** that ``MethodInfo.factory(config)`` builds for one run
    :when: during that run, only for the methods selected (``--method``, ``kdzoo.get_method``), in
        selection order
    """

    @hookspec
    def kdzoo_plan(self, teacher: ModelInfo | None, student: ModelInfo) -> Any:
        """What this method decides once from the two models (which stages it pairs, how wide its
        modules are), handed to each of its other hooks as their ``plan`` argument: nothing worked
        out in one hook has to be kept on ``self`` for another, and no hook depends on another
        having run first. Any object will do (a list of stage pairs, a dataclass).

        :param teacher: the teacher's :class:`kdzoo.ModelInfo`, or ``None`` when the run has no teacher
        :param student: the student's :class:`kdzoo.ModelInfo`
        :when: once per run, when the objective is built, before every other per-run hook
        :returns: the method's plan (any object), or ``None``

        Example (AT's stage pairs, made once, read by its taps and its loss)::

            @kdzoo.hookimpl
            def kdzoo_plan(self, teacher, student):
                return pair_inner_stages(teacher, student)

            @kdzoo.hookimpl
            def kdzoo_feature_taps(self, plan):
                return Taps.of_pairs(plan)
        """

    @hookspec
    def kdzoo_feature_taps(self, teacher: ModelInfo | None, student: ModelInfo, plan: Any) -> Taps | None:
        """Which intermediate features (indices into ``ModelInfo.stages``) and embeddings this
        method needs. The core takes the union over active methods and runs ONE forward pass per
        model per step. Logits are always available; return ``None`` for logits only. A method
        that needs only a reduced form of a teacher map lists a :class:`~kdzoo.Summary` in
        ``teacher_summaries`` instead: only the reduction is kept through the step and cached.

        :param teacher: the teacher's :class:`kdzoo.ModelInfo`, or ``None`` when the run has no teacher
        :param student: the student's :class:`kdzoo.ModelInfo`
        :param plan: what this method's :meth:`kdzoo_plan` returned (``None`` without one)
        :when: once per run, when the objective is built (``kdzoo run``, ``kdzoo.get_method``), after :meth:`kdzoo_plan`
        :returns: a :class:`kdzoo.Taps` (stage features, embeddings, pre-activation maps, summaries), or
            ``None`` for logits only; the core takes the union over the active methods

        Example (FitNets' hint on the student's middle stage)::

            @kdzoo.hookimpl
            def kdzoo_feature_taps(self, teacher, student):
                s = len(student.stages) // 2
                return Taps(student=(s,), teacher=(pair_stage(teacher, student, s),))
        """

    @hookspec
    def kdzoo_views(self, student: ModelInfo, plan: Any) -> list[View] | None:
        """Extra views of each training image this method trains on (:class:`kdzoo.View`), besides the
        batch itself. The core stacks them after the batch, one forward pass per model on the stack;
        this method's :meth:`kdzoo_compute_losses` then gets outputs for the whole stack and
        ``views``, each view's rows (``{"input": slice(0, B), "rotate90": slice(B, 2B), ...}``),
        while methods that ask for no views still see the input rows alone, and the core's ``ce``
        uses the input rows. A teacher-output cache holds one view per sample: runs with views
        refuse it in one line.

        :param student: the student's :class:`kdzoo.ModelInfo`
        :param plan: what this method's :meth:`kdzoo_plan` returned (``None`` without one)
        :when: once per run, when the objective is built, after :meth:`kdzoo_feature_taps`
        :returns: a list of :class:`kdzoo.View` (a name and a function making the view of a batch on its
            device), or ``None`` for the batch alone

        Example (SSKD's rotations)::

            @kdzoo.hookimpl
            def kdzoo_views(self):
                return [View(f"rot{k * 90}", functools.partial(torch.rot90, k=k, dims=(2, 3))) for k in (1, 2, 3)]
        """

    @hookspec
    def kdzoo_build_modules(
        self, teacher: ModelInfo | None, student: ModelInfo, train_set: TrainingSet | None, plan: Any
    ) -> dict[str, nn.Module] | None:
        """Trainable modules this method owns (regressors, auxiliary heads), sized from the
        ``ModelInfo`` (channels, reduction) without a dummy forward. The core moves them to the
        device, optimises them with the student and saves them in checkpoints; they are not part
        of the exported student. :meth:`kdzoo_compute_losses` and :meth:`kdzoo_schedule` receive them back as
        their ``modules`` argument.

        State kept per training sample (a memory bank) is sized from ``train_set`` (``None`` when
        the objective is used without one: say so in one line if the method needs it) and lives in
        :class:`kdzoo.toolkit.SampleMemory` / :class:`kdzoo.toolkit.EmbeddingQueue` buffers, which are
        checkpointed with the modules and kept equal across processes.

        :param teacher: the teacher's :class:`kdzoo.ModelInfo`, or ``None`` when the run has no teacher
        :param student: the student's :class:`kdzoo.ModelInfo`
        :param train_set: what the method may know of the training data (:class:`kdzoo.TrainingSet`:
            number of samples, their labels, this process's batch size, the device), or ``None``
        :param plan: what this method's :meth:`kdzoo_plan` returned (``None`` without one)
        :when: once per run, when the objective is built, after :meth:`kdzoo_views`
        :returns: ``{name: nn.Module}``, the method's trainable modules, or ``None`` for none; the core owns
            their device, optimizer and checkpoint

        Example::

            @kdzoo.hookimpl
            def kdzoo_build_modules(self, teacher, student, plan):
                s, t = plan  # the paired stages, from kdzoo_plan
                return {"regressor": ConvRegressor(student.stages[s].channels, teacher.stages[t].channels)}
        """

    @hookspec
    def kdzoo_compute_losses(
        self,
        student: Outputs,
        teacher: Outputs | None,
        targets: Tensor,
        stage: Stage,
        indices: Tensor | None,
        views: dict[str, slice],
        plan: Any,
        modules: nn.ModuleDict,
        soft_targets: Tensor | None,
        teachers: list[Outputs] | None,
    ) -> dict[str, Tensor] | None:
        """Named, *unweighted* scalar loss terms for one batch. Weights come from
        :meth:`kdzoo_loss_weights`; the core adds ``ce`` (the student's cross-entropy with the
        labels) itself, so methods never compute it. Term names must be unique across the
        active methods; terms a stage switches off may be skipped (``stage.term_on(name)``).
        ``indices``: each sample's position in the training set (int64, on the batch's device, or
        ``None`` where the data gives none, e.g. a user's own loader of (images, labels)).
        ``views``: the rows of each view in ``student`` / ``teacher`` (see :meth:`kdzoo_views`;
        ``{"input": slice(0, B)}`` for a method that asked for none); ``targets`` are the input's.

        :param student: the student's :class:`kdzoo.Outputs` for the batch (logits and the tapped features)
        :param teacher: the teacher's :class:`kdzoo.Outputs` (live, or from a teacher-output cache), or
            ``None`` when the run has no teacher
        :param targets: the batch's labels (int64 class indices); under ``data.mixup`` / ``cutmix`` each
            mixed sample's dominant class (the one covering at least half of it)
        :param stage: the :class:`kdzoo.Stage` being trained
        :param indices: each sample's position in the training set, or ``None``
        :param views: the rows of each view in ``student`` / ``teacher``
        :param plan: what this method's :meth:`kdzoo_plan` returned (``None`` without one)
        :param modules: this method's own modules (what its :meth:`kdzoo_build_modules` returned)
        :param soft_targets: the batch's targets as class distributions (N, classes) under
            ``data.mixup`` / ``cutmix`` (mixed and smoothed as the core's ``ce`` uses them), else ``None``;
            a method that compares with the labels' distribution uses them when given
        :param teachers: every teacher's :class:`kdzoo.Outputs` (their logits), in ``teachers:`` order, for a
            method that weighs its teachers itself; ``[teacher]`` with one teacher, ``None`` without. With
            several, ``teacher`` is their ensemble (the mean of their logits), so a method written for one
            teacher distils the ensemble unchanged
        :when: every training step, after the forward passes
        :returns: ``{term: scalar tensor}``, unweighted, or ``None`` for no terms; the core adds ``ce``

        Example::

            @kdzoo.hookimpl
            def kdzoo_compute_losses(self, student, teacher):
                return {"kd": soft_target_kl(student.logits, teacher.logits, self.config.temperature)}
        """

    @hookspec
    def kdzoo_loss_weights(self, stage: Stage, epoch: int, progress: float, plan: Any) -> dict[str, float] | None:
        """Weights for this method's terms (and, optionally, the core's ``ce`` term) at this point
        of training. ``epoch`` counts from 0 inside ``stage``; ``progress`` runs from 0 to 1 over
        the stage, so ramps and warm-ups live here, not inside the loss. When several methods
        weight ``ce``, the first method selected wins.

        :param stage: the :class:`kdzoo.Stage` being trained
        :param epoch: the epoch inside ``stage``, from 0
        :param progress: how far through ``stage`` training is, from 0 to 1
        :param plan: what this method's :meth:`kdzoo_plan` returned (``None`` without one)
        :when: every training step (and once per stage when the run is built, to report clashing weights)
        :returns: ``{term: weight}`` (ramps, warm-ups), or ``None``; a term given no weight has weight 1

        Example (a linear warm-up of the hint over the first 20% of the stage)::

            @kdzoo.hookimpl
            def kdzoo_loss_weights(self, progress):
                return {"ce": 1.0, "hint": 100.0 * min(1.0, progress / 0.2)}
        """

    @hookspec(firstresult=True)
    def kdzoo_schedule(
        self, epochs: int, teacher: ModelInfo | None, student: ModelInfo, plan: Any, modules: nn.ModuleDict
    ) -> list[Stage] | None:
        """The stages of training; the first method returning a list wins, and the core's default
        (one stage of ``epochs`` with every term on) runs last.

        :param epochs: the run's ``train.epochs``
        :param teacher: the teacher's :class:`kdzoo.ModelInfo`, or ``None`` when the run has no teacher
        :param student: the student's :class:`kdzoo.ModelInfo`
        :param plan: what this method's :meth:`kdzoo_plan` returned (``None`` without one)
        :param modules: this method's own modules (what its :meth:`kdzoo_build_modules` returned), for a
            stage's ``trainable`` to name what it trains
        :when: once per run, when the run is built, after the objective
        :returns: a list of :class:`kdzoo.Stage` (name, epochs, terms on, what trains, optimizer overrides),
            or ``None`` to leave the schedule to another method or the core

        Example (FitNets' two stages)::

            @kdzoo.hookimpl
            def kdzoo_schedule(self, epochs, student, plan, modules):
                hint, regressor = student.stages[plan[0]].module, modules["regressor"]
                up_to_hint = lambda model, _modules: [*parameters_up_to(model, hint), *regressor.parameters()]
                return [Stage("hint", 5, losses=frozenset({"hint"}), trainable=up_to_hint),
                        Stage("kd", epochs, losses=frozenset({"ce", "kd"}))]
        """

    @hookspec
    def kdzoo_on_teacher(self, teacher: nn.Module, info: ModelInfo, plan: Any, modules: nn.ModuleDict) -> None:
        """Called whenever the objective gets a teacher *model* (when it is built, and when a method
        hands one over), for a method that reuses the teacher's weights (SimKD copies its classifier).
        A teacher whose outputs come from a teacher-output cache is never built: such a method says
        so in one line (e.g. in :meth:`kdzoo_on_run_start`).

        :param teacher: the frozen teacher model
        :param info: the teacher's :class:`kdzoo.ModelInfo`
        :param plan: what this method's :meth:`kdzoo_plan` returned (``None`` without one)
        :param modules: this method's own modules (what its :meth:`kdzoo_build_modules` returned)
        :when: whenever the objective gets a teacher model: when it is built with one, and when a method
            hands one over (``run.set_teacher``)
        :returns: nothing

        Example::

            @kdzoo.hookimpl
            def kdzoo_on_teacher(self, teacher, modules):
                modules["head"].load_state_dict(teacher.get_classifier().state_dict())
        """

    @hookspec
    def kdzoo_deployed_model(self, student: nn.Module, modules: nn.ModuleDict, plan: Any) -> nn.Module | None:
        """The network to evaluate and export in place of the bare student, for a method that changes
        what is deployed (SimKD: the student's backbone, a projector and the teacher's classifier).

        Build it from ``student`` and this method's own ``modules`` (from :meth:`kdzoo_build_modules`),
        sharing their parameters, with a plain ``forward(images) -> logits``. It is called once per
        run, and again by ``kdzoo eval`` on a fresh build whose weights then come from the exported
        file, so it must depend on nothing but its arguments. Return ``None`` (or leave the hook out)
        to deploy the student alone.

        :param student: the student model
        :param modules: this method's own modules (from :meth:`kdzoo_build_modules`)
        :param plan: what this method's :meth:`kdzoo_plan` returned (``None`` without one)
        :when: once per run, the first time the student is evaluated or exported; again by ``kdzoo eval``
            and ``kdzoo.load_student`` on a fresh build
        :returns: the network to evaluate and export, or ``None`` for the student alone; at most one
            active method may return one

        Example::

            @kdzoo.hookimpl
            def kdzoo_deployed_model(self, student, modules):
                return nn.Sequential(student, modules["calibration"])
        """

    @hookspec
    def kdzoo_on_run_start(self, run: Run) -> None:
        """Called once the models, method modules and data are ready, before the first stage.
        ``run`` is a :class:`kdzoo.Run` (``teacher``, ``student``, ``modules``, ``config``,
        ``device``, ``run_dir``, ...).

        :param run: the run (:class:`kdzoo.Run`)
        :when: once, before the first stage (also when a run resumes); in the engine only (``kdzoo run``,
            ``kdzoo.distill``)
        :returns: nothing
        """

    @hookspec
    def kdzoo_on_stage_start(self, run: Run, stage: Stage, index: int, resumed: bool) -> None:
        """Called before ``stage`` builds its optimizer; ``resumed`` is True when a resumed run
        re-enters the stage mid-way (its state is already restored: do not reset anything then).

        :param run: the run (:class:`kdzoo.Run`)
        :param stage: the :class:`kdzoo.Stage` starting
        :param index: its position in ``run.stages``
        :param resumed: ``True`` when a resumed run re-enters the stage mid-way
        :when: before each stage builds its optimizer
        :returns: nothing

        Example (a new generation starts from a fresh initialisation)::

            @kdzoo.hookimpl
            def kdzoo_on_stage_start(self, run, index, resumed):
                if index > 0 and not resumed:
                    run.student.load_state_dict(run.new_student(seed=index).state_dict())
        """

    @hookspec
    def kdzoo_on_epoch_end(self, run: Run, stage: Stage, epoch: int, metrics: dict[str, Any]) -> None:
        """Called after each epoch's evaluation with that epoch's metrics record.

        :param run: the run (:class:`kdzoo.Run`)
        :param stage: the :class:`kdzoo.Stage` being trained
        :param epoch: the epoch inside ``stage``, from 0
        :param metrics: the record written to ``metrics.jsonl`` (``train`` terms, ``val`` accuracy, ``lr``, ...)
        :when: after each epoch's evaluation, before its checkpoint
        :returns: nothing

        Example::

            @kdzoo.hookimpl
            def kdzoo_on_epoch_end(self, epoch, metrics):
                print(epoch, metrics["val"]["top1"])
        """

    @hookspec
    def kdzoo_on_train_log(
        self,
        run: Run,
        stage: Stage,
        epoch: int,
        step: int,
        global_step: int,
        values: dict[str, float],
        weights: dict[str, float],
        lr: float,
    ) -> None:
        """Called every ``train.log_every`` steps and at each epoch's last step (the loop's host syncs),
        on every process, with the loss and each term averaged over the steps since the last call (and
        over processes): the per-step record trackers log (``metrics.jsonl`` holds the epochs').

        :param run: the run (:class:`kdzoo.Run`)
        :param stage: the :class:`kdzoo.Stage` being trained
        :param epoch: the epoch inside ``stage``, from 0
        :param step: steps done in this epoch, from 1
        :param global_step: steps done over the whole run (the epoch records' ``global_step`` at their ends)
        :param values: ``loss`` and every unweighted term, each its per-step mean since the last call
        :param weights: each term's weight at this step
        :param lr: the learning rate of the optimizer's first group
        :when: every ``train.log_every`` steps and at each epoch's last step, on every process
        :returns: nothing

        Example::

            @kdzoo.hookimpl
            def kdzoo_on_train_log(self, global_step, values):
                print(global_step, values["loss"])
        """

    @hookspec
    def kdzoo_on_stage_end(self, run: Run, stage: Stage, index: int) -> None:
        """Called after the last epoch of ``stage`` and before its checkpoint is written: the
        place to hand the trained student over as the next stage's teacher.

        :param run: the run (:class:`kdzoo.Run`)
        :param stage: the :class:`kdzoo.Stage` that ended
        :param index: its position in ``run.stages``
        :when: after the last epoch of each stage (also of a stage of 0 epochs), before its checkpoint
        :returns: nothing

        Example (Born-Again Networks)::

            @kdzoo.hookimpl
            def kdzoo_on_stage_end(self, run, index):
                run.set_teacher(run.student_copy(), name=f"generation {index}")
        """

    @hookspec
    def kdzoo_on_run_end(self, run: Run, summary: dict[str, Any]) -> None:
        """Called once at the end with the run's summary (accuracies, wall time, run directory).

        :param run: the run (:class:`kdzoo.Run`)
        :param summary: the run's summary, as written to ``summary.json``
        :when: once, at the end, after the student is exported and ``summary.json`` written
        :returns: nothing
        """
