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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy
from torch import Tensor, nn

from kdzoo.api import MethodInfo, ModelInfo, Outputs, Run, Stage, Taps, TrainingSet, View

hookspec = pluggy.HookspecMarker("kdzoo")


class DiscoverySpec:
    @hookspec
    def kdzoo_register_methods(self, register: Callable[[MethodInfo], None]) -> None:
        """Register the methods this plugin module provides by calling ``register`` once per method.

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

        Example::

            @kdzoo.hookimpl
            def kdzoo_register_models(register):
                register(resnet8x4)  # def resnet8x4(pretrained=False, **kwargs) -> nn.Module
        """


class MethodSpec:
    @hookspec
    def kdzoo_feature_taps(self, teacher: ModelInfo | None, student: ModelInfo) -> Taps | None:
        """Which intermediate features (indices into ``ModelInfo.stages``) and embeddings this
        method needs. The core takes the union over active methods and runs ONE forward pass per
        model per step. Logits are always available; return ``None`` for logits only. A method
        that needs only a reduced form of a teacher map lists a :class:`~kdzoo.Summary` in
        ``teacher_summaries`` instead: only the reduction is kept through the step and cached.

        Example (FitNets' hint on the student's middle stage)::

            @kdzoo.hookimpl
            def kdzoo_feature_taps(self, teacher, student):
                s = len(student.stages) // 2
                return Taps(student=(s,), teacher=(pair_stage(teacher, student, s),))
        """

    @hookspec
    def kdzoo_views(self, student: ModelInfo) -> list[View] | None:
        """Extra views of each training image this method trains on (:class:`kdzoo.View`), besides the
        batch itself. The core stacks them after the batch, one forward pass per model on the stack;
        this method's :meth:`kdzoo_compute_losses` then gets outputs for the whole stack and
        ``views``, each view's rows (``{"input": slice(0, B), "rotate90": slice(B, 2B), ...}``),
        while methods that ask for no views still see the input rows alone, and the core's ``ce``
        uses the input rows. A teacher-output cache holds one view per sample: runs with views
        refuse it in one line.

        Example (SSKD's rotations)::

            @kdzoo.hookimpl
            def kdzoo_views(self):
                return [View(f"rot{k * 90}", functools.partial(torch.rot90, k=k, dims=(2, 3))) for k in (1, 2, 3)]
        """

    @hookspec
    def kdzoo_build_modules(
        self, teacher: ModelInfo | None, student: ModelInfo, train_set: TrainingSet | None
    ) -> dict[str, nn.Module] | None:
        """Trainable modules this method owns (regressors, auxiliary heads), sized from the
        ``ModelInfo`` (channels, reduction) without a dummy forward. The core moves them to the
        device, optimises them with the student and saves them in checkpoints; they are not part
        of the exported student. Keep references to use them in :meth:`kdzoo_compute_losses`.

        State kept per training sample (a memory bank) is sized from ``train_set`` (``None`` when
        the objective is used without one: say so in one line if the method needs it) and lives in
        :class:`kdzoo.memory.SampleMemory` / :class:`kdzoo.memory.EmbeddingQueue` buffers, which are
        checkpointed with the modules and kept equal across processes.

        Example::

            @kdzoo.hookimpl
            def kdzoo_build_modules(self, teacher, student):
                self.regressor = ConvRegressor(student.stages[2].channels, teacher.stages[2].channels)
                return {"regressor": self.regressor}
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
    ) -> dict[str, Tensor] | None:
        """Named, *unweighted* scalar loss terms for one batch. Weights come from
        :meth:`kdzoo_loss_weights`; the core adds ``ce`` (the student's cross-entropy with the
        labels) itself, so methods never compute it. Term names must be unique across the
        active methods; terms a stage switches off may be skipped (``stage.term_on(name)``).
        ``indices``: each sample's position in the training set (int64, on the batch's device, or
        ``None`` where the data gives none, e.g. a user's own loader of (images, labels)).
        ``views``: the rows of each view in ``student`` / ``teacher`` (see :meth:`kdzoo_views`;
        ``{"input": slice(0, B)}`` for a method that asked for none); ``targets`` are the input's.

        Example::

            @kdzoo.hookimpl
            def kdzoo_compute_losses(self, student, teacher):
                return {"kd": soft_target_kl(student.logits, teacher.logits, self.config.temperature)}
        """

    @hookspec
    def kdzoo_loss_weights(self, stage: Stage, epoch: int, progress: float) -> dict[str, float] | None:
        """Weights for this method's terms (and, optionally, the core's ``ce`` term) at this point
        of training. ``epoch`` counts from 0 inside ``stage``; ``progress`` runs from 0 to 1 over
        the stage, so ramps and warm-ups live here, not inside the loss. When several methods
        weight ``ce``, the first method selected wins.

        Example (a linear warm-up of the hint over the first 20% of the stage)::

            @kdzoo.hookimpl
            def kdzoo_loss_weights(self, progress):
                return {"ce": 1.0, "hint": 100.0 * min(1.0, progress / 0.2)}
        """

    @hookspec(firstresult=True)
    def kdzoo_schedule(self, epochs: int, teacher: ModelInfo | None, student: ModelInfo) -> list[Stage] | None:
        """The stages of training; the first method returning a list wins, and the core's default
        (one stage of ``epochs`` with every term on) runs last.

        Example (FitNets' two stages)::

            @kdzoo.hookimpl
            def kdzoo_schedule(self, epochs):
                return [Stage("hint", 5, losses=frozenset({"hint"}), trainable=self.up_to_hint),
                        Stage("kd", epochs, losses=frozenset({"ce", "kd"}))]
        """

    @hookspec
    def kdzoo_on_teacher(self, teacher: nn.Module, info: ModelInfo) -> None:
        """Called whenever the objective gets a teacher *model* (when it is built, and when a method
        hands one over), for a method that reuses the teacher's weights (SimKD copies its classifier).
        A teacher whose outputs come from a teacher-output cache is never built: such a method says
        so in one line (e.g. in :meth:`kdzoo_on_run_start`).

        Example::

            @kdzoo.hookimpl
            def kdzoo_on_teacher(self, teacher):
                self.head.load_state_dict(teacher.get_classifier().state_dict())
        """

    @hookspec
    def kdzoo_deployed_model(self, student: nn.Module, modules: nn.ModuleDict) -> nn.Module | None:
        """The network to evaluate and export in place of the bare student, for a method that changes
        what is deployed (SimKD: the student's backbone, a projector and the teacher's classifier).

        Build it from ``student`` and this method's own ``modules`` (from :meth:`kdzoo_build_modules`),
        sharing their parameters, with a plain ``forward(images) -> logits``. It is called once per
        run, and again by ``kdzoo eval`` on a fresh build whose weights then come from the exported
        file, so it must depend on nothing but its arguments. Return ``None`` (or leave the hook out)
        to deploy the student alone.

        Example::

            @kdzoo.hookimpl
            def kdzoo_deployed_model(self, student, modules):
                return nn.Sequential(student, modules["calibration"])
        """

    @hookspec
    def kdzoo_on_run_start(self, run: Run) -> None:
        """Called once the models, method modules and data are ready, before the first stage.
        ``run`` is a :class:`kdzoo.Run` (``teacher``, ``student``, ``modules``, ``config``,
        ``device``, ``run_dir``, ...)."""

    @hookspec
    def kdzoo_on_stage_start(self, run: Run, stage: Stage, index: int, resumed: bool) -> None:
        """Called before ``stage`` builds its optimizer; ``resumed`` is True when a resumed run
        re-enters the stage mid-way (its state is already restored: do not reset anything then).

        Example (a new generation starts from a fresh initialisation)::

            @kdzoo.hookimpl
            def kdzoo_on_stage_start(self, run, index, resumed):
                if index > 0 and not resumed:
                    run.student.load_state_dict(run.new_student(seed=index).state_dict())
        """

    @hookspec
    def kdzoo_on_epoch_end(self, run: Run, stage: Stage, epoch: int, metrics: dict[str, Any]) -> None:
        """Called after each epoch's evaluation with that epoch's metrics record.

        Example::

            @kdzoo.hookimpl
            def kdzoo_on_epoch_end(self, epoch, metrics):
                print(epoch, metrics["val"]["top1"])
        """

    @hookspec
    def kdzoo_on_stage_end(self, run: Run, stage: Stage, index: int) -> None:
        """Called after the last epoch of ``stage`` and before its checkpoint is written: the
        place to hand the trained student over as the next stage's teacher.

        Example (Born-Again Networks)::

            @kdzoo.hookimpl
            def kdzoo_on_stage_end(self, run, index):
                run.set_teacher(run.student_copy(), name=f"generation {index}")
        """

    @hookspec
    def kdzoo_on_run_end(self, run: Run, summary: dict[str, Any]) -> None:
        """Called once at the end with the run's summary (accuracies, wall time, run directory)."""
