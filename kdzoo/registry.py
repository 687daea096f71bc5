"""The registry of methods: plugin discovery, and the per-run plugin manager.

Built-in methods come in through the ``kdzoo`` entry-point group of kdzoo's own pyproject.toml,
exactly the door a third-party package uses; this module never imports a method by name. A plugin
that fails to import, names a hook that does not exist, or registers an invalid method is recorded as
a failure under its own name and the other plugins keep working; so is one that calls ``sys.exit`` or
raises ``KeyboardInterrupt`` (any ``BaseException``) while loading: a plugin cannot stop kdzoo, only the
user's Ctrl-C can. Each plugin's import is timed; one slower than :data:`SLOW_IMPORT_S` is named in one
line, since every command that loads plugins waits for it. ``KDZOO_DISABLE_PLUGINS=name1,name2`` skips
plugins by entry-point name (``DISTRIBUTION:NAME`` skips one distribution's).

Names are never taken in silence. A method name that two distributions register is a *clash*: both
methods load, each under its qualified name ``DISTRIBUTION:METHOD`` (``kdzoo:kd``, ``my-kd-pkg:kd``), and
the bare name selects neither (:meth:`Registry.get` raises, naming both): a built-in is never replaced
unless the user chooses the other. Any method can be selected by its qualified name. An entry-point
name that two distributions declare loads both plugins, each named ``DISTRIBUTION:NAME``. Both kinds of
clash are lines of :meth:`Registry.clash_lines` (``kdzoo list``, ``kdzoo plugins``);
:meth:`Registry.method_sources` says which distribution and version supply each selected method.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pluggy

from kdzoo import hookspecs
from kdzoo.api import BATCHES, KINDS, DatasetInfo, LoggerInfo, MethodInfo, Stage, hookimpl
from kdzoo.errors import KdzooError, close_matches, first_line, unknown_method

ENTRY_POINT_GROUP = "kdzoo"
_RUN_HOOKS = {name for name in dir(hookspecs.MethodSpec) if name.startswith("kdzoo_")}
_DISCOVERY_HOOKS = {name for name in dir(hookspecs.DiscoverySpec) if name.startswith("kdzoo_")}
#: seconds: a plugin that takes longer to import is named (it delays every command that loads plugins)
SLOW_IMPORT_S = 5.0
#: between a distribution and a method (``kdzoo:kd``) or an entry-point name (``my-pkg:pkt``)
QUALIFIER = ":"
#: the distribution of the built-in methods: named first where several supply one name
CORE_DISTRIBUTION = "kdzoo"
T = TypeVar("T")


def distribution_key(name: str) -> str:
    """A distribution's name as a qualified name spells it, normalised as pip does (PEP 503):
    ``My_KD.Pkg`` -> ``my-kd-pkg``; any spelling pip accepts selects the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def qualified_name(info: MethodInfo) -> str:
    """``DISTRIBUTION:METHOD`` for a method loaded from a distribution (``kdzoo:kd``)."""
    return f"{distribution_key(info.distribution)}{QUALIFIER}{info.name}"


def _supplier(info: MethodInfo) -> str:
    """``my-kd-pkg 1.0 (plugin 'evil')``: who supplies a method, for a clash line or error."""
    return f"{info.distribution} {info.version} (plugin '{info.plugin}')".replace("  ", " ")


def _core_first(info: MethodInfo) -> tuple[bool, str]:
    key = distribution_key(info.distribution)
    return key != CORE_DISTRIBUTION, key


def _listed(items: list[str]) -> str:
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else "".join(items)


def _register_timm_model(fn: Callable) -> Callable:
    """timm's ``register_model``, once per name (plugins may be loaded again in one process)."""
    import timm
    from timm.models import register_model

    return fn if timm.is_model(fn.__name__) else register_model(fn)


@dataclass
class LoadedPlugin:
    name: str
    distribution: str
    version: str
    methods: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    import_s: float = 0.0


@dataclass
class Registry:
    """Every method that loaded, every plugin that did, every plugin that failed (with why), and the
    plugins slower than :data:`SLOW_IMPORT_S` to import (seconds).

    ``methods`` holds every method by the name that selects it: its own name, or, for a name two
    distributions register, each one's qualified name (``kdzoo:kd``, ``my-kd-pkg:kd``; ``info.name``
    is that name). ``clashes`` holds those names with the methods that share them (the built-in first);
    ``shared_entry_points`` each entry-point name two distributions declare, with (plugin name,
    distribution, version) of each, loaded or not."""

    methods: dict[str, MethodInfo] = field(default_factory=dict)
    plugins: list[LoadedPlugin] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    slow: dict[str, float] = field(default_factory=dict)
    clashes: dict[str, list[MethodInfo]] = field(default_factory=dict)
    shared_entry_points: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    #: the datasets plugins add (``kdzoo_register_datasets``), by the ``data.name`` that selects them
    datasets: dict[str, DatasetInfo] = field(default_factory=dict)
    #: the experiment trackers plugins add (``kdzoo_register_loggers``), by the name ``train.loggers`` uses
    loggers: dict[str, LoggerInfo] = field(default_factory=dict)

    def get(self, name: str) -> MethodInfo:
        """The method ``name`` selects (see :meth:`find`), or a one-line :class:`KdzooError` saying why none."""
        info = self.find(name)
        if info is not None:
            return info
        dist, _, method = str(name).rpartition(QUALIFIER)
        if dist and self._holders(method):
            known = ", ".join(qualified_name(i) for i in self._holders(method))
            raise KdzooError(
                f"unknown method '{name}': distribution '{dist}' registers no method '{method}' (installed: {known})"
            )
        raise unknown_method(name, self.methods, self.failures)

    def find(self, name: str) -> MethodInfo | None:
        """The method ``name`` selects, or None if none: a name in :attr:`methods`, or
        ``DISTRIBUTION:METHOD`` for any method (the distribution spelt any way pip accepts; the
        method returned is named ``name``, as the run config that selects it holds it). A name two
        distributions register selects neither: a :class:`KdzooError` naming both and how to choose."""
        if not isinstance(name, str):
            return None
        if name in self.methods:
            return self.methods[name]
        if name in self.clashes:
            raise self.ambiguous(name)
        dist, sep, method = name.rpartition(QUALIFIER)
        if not sep or not dist:
            return None
        for info in self._holders(method):
            if info.distribution and distribution_key(info.distribution) == distribution_key(dist):
                return replace(info, name=name)
        return None

    def ambiguous(self, name: str) -> KdzooError:
        """The error for selecting a method name that several distributions register."""
        holders = self.clashes[name]
        choices = [qualified_name(info) for info in holders]
        return KdzooError(
            f"method '{name}' is registered by {len(holders)} distributions, "
            f"{_listed([_supplier(i) for i in holders])}; kdzoo does not choose between them: select one by "
            f"DISTRIBUTION:METHOD, {' or '.join(repr(c) for c in choices)} "
            f"(--method {choices[0]} --set {choices[0]}.KEY=VALUE, or methods: [{choices[0]}] and a "
            f"{choices[0]}: section in a config file)"
        )

    def clash_lines(self) -> list[str]:
        """One line per method name two distributions register, and per entry-point name two declare."""
        lines = [
            f"method '{name}' is registered by {len(holders)} distributions, "
            f"{_listed([_supplier(i) for i in holders])}: '{name}' alone selects neither; "
            f"select {' or '.join(qualified_name(i) for i in holders)}"
            for name, holders in sorted(self.clashes.items())
        ]
        for name, holders in sorted(self.shared_entry_points.items()):
            dists = _listed([f"{dist} {version}".strip() for _, dist, version in holders])
            plugins = _listed([f"'{plugin}'" for plugin, _, _ in holders])
            lines.append(
                f"entry point '{name}' is declared by {len(holders)} distributions, {dists}: "
                f"each loaded on its own, as plugins {plugins}"
            )
        return lines

    def method_sources(self, names: Iterable[str]) -> dict[str, dict[str, str]]:
        """For each selected method name, as a run config holds it (``kd``, ``my-kd-pkg:kd``): the
        ``distribution`` and ``version`` that supply it, its ``plugin`` (entry point) and the ``method``
        name it registered; what a run records in ``config.json`` and ``summary.json``."""
        sources = {}
        for name in names:
            info = self.get(name)
            sources[name] = {
                "method": name.rpartition(QUALIFIER)[2],
                "distribution": info.distribution,
                "version": info.version,
                "plugin": info.plugin,
            }
        return sources

    def config_classes(self) -> dict[str, type]:
        """Method name -> config class, as the config loader reads it (see :class:`MethodConfigClasses`)."""
        return MethodConfigClasses(self)

    def _holders(self, name: str) -> list[MethodInfo]:
        """The methods registered under their own name ``name`` (two or more: a clash)."""
        if name in self.clashes:
            return self.clashes[name]
        return [self.methods[name]] if name in self.methods and QUALIFIER not in name else []

    def _add_method(self, info: MethodInfo) -> None:
        holders = self._holders(info.name)
        if not holders:
            self.methods[info.name] = info
            return
        self.methods.pop(info.name, None)  # a clash: the bare name selects neither, from now on
        self.clashes[info.name] = sorted([*holders, info], key=_core_first)
        for each in self.clashes[info.name]:
            self.methods[qualified_name(each)] = replace(each, name=qualified_name(each))

    def _check_dataset(self, info: object, earlier: list[DatasetInfo]) -> None:
        """A registered dataset is a :class:`DatasetInfo` with a name no other plugin took."""
        _check_registered(info, DatasetInfo, "load", "dataset", earlier, self.datasets)

    def _check_logger(self, info: object, earlier: list[LoggerInfo]) -> None:
        """A registered tracker is a :class:`LoggerInfo` with a name no other plugin took."""
        _check_registered(info, LoggerInfo, "factory", "logger", earlier, self.loggers)

    def _check_name_free(self, info: MethodInfo, distribution: str, earlier: list[MethodInfo]) -> None:
        """A name another distribution registers is a clash (both kept); one that cannot be told apart by
        ``DISTRIBUTION:METHOD`` (the same distribution, or a plugin from none) fails the later plugin."""
        if any(other.name == info.name for other in earlier):
            raise ValueError(f"method name '{info.name}' is registered twice by this plugin")
        for other in self._holders(info.name):
            if not distribution or not other.distribution:
                why = "a plugin not from a distribution cannot share a method name"
            elif distribution_key(distribution) == distribution_key(other.distribution):
                why = f"{other.distribution} registers it twice"
            else:
                continue
            raise ValueError(f"method name '{info.name}' is already registered by plugin '{other.plugin}' ({why})")

    def add_plugin(
        self, plugin: object, name: str, distribution: str = "", version: str = "", import_s: float = 0.0
    ) -> None:
        """Load one plugin object (usually a module); failures are recorded, never raised."""
        found: list[MethodInfo] = []
        datasets: list[DatasetInfo] = []
        loggers: list[LoggerInfo] = []
        _, failure = _guarded(lambda: self._discover(plugin, name, distribution, found, datasets, loggers))
        if failure is not None:  # a broken plugin must not take the others (or kdzoo) down
            self.failures[name] = failure
            return
        for dataset in datasets:
            self.datasets[dataset.name] = replace(dataset, plugin=name, distribution=distribution, version=version)
        for logger in loggers:
            self.loggers[logger.name] = replace(logger, plugin=name, distribution=distribution, version=version)
        loaded = LoadedPlugin(name, distribution, version, hooks=_hook_names(plugin), import_s=import_s)
        for info in found:
            self._add_method(replace(info, plugin=name, distribution=distribution, version=version))
            loaded.methods.append(info.name)
            loaded.hooks = sorted(set(loaded.hooks) | set(_hook_names(info.factory)))
        self.plugins.append(loaded)

    def _discover(
        self,
        plugin: object,
        name: str,
        distribution: str,
        found: list[MethodInfo],
        datasets: list[DatasetInfo],
        loggers: list[LoggerInfo],
    ) -> None:
        """Call ``plugin``'s discovery hooks: its methods into ``found`` (checked), its models into timm,
        its datasets into ``datasets`` and its trackers into ``loggers`` (checked)."""
        pm = pluggy.PluginManager("kdzoo")
        pm.add_hookspecs(hookspecs.DiscoverySpec)
        pm.register(plugin, name=name)
        _check_hook_names(plugin, _DISCOVERY_HOOKS)
        for impl in pm.hook.kdzoo_register_methods.get_hookimpls():
            impl.function(**{arg: found.append for arg in impl.argnames})
        for impl in pm.hook.kdzoo_register_models.get_hookimpls():
            impl.function(**{arg: _register_timm_model for arg in impl.argnames})
        for impl in pm.hook.kdzoo_register_datasets.get_hookimpls():
            impl.function(**{arg: datasets.append for arg in impl.argnames})
        for i, dataset in enumerate(datasets):
            self._check_dataset(dataset, datasets[:i])
        for impl in pm.hook.kdzoo_register_loggers.get_hookimpls():
            impl.function(**{arg: loggers.append for arg in impl.argnames})
        for i, logger in enumerate(loggers):
            self._check_logger(logger, loggers[:i])
        for i, info in enumerate(found):
            _check_method(info)
            self._check_name_free(info, distribution, found[:i])


def _check_registered(info: Any, kind: type, loader: str, what: str, earlier: list, registered: dict) -> None:
    """``info`` is a ``kind`` whose ``loader`` is callable, named plainly (no '/': ``data.name`` keeps
    those for timm's readers), and its name is not taken by an earlier registration."""
    if (
        not isinstance(info, kind)
        or not isinstance(getattr(info, "name", None), str)
        or not callable(getattr(info, loader, None))
    ):
        raise ValueError(
            f"kdzoo_register_{what}s must register {kind.__name__}(name=..., {loader}=...), got {info!r:.80}"
        )
    name = info.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"{what} name {name!r:.60} must be letters, digits, '_', '.' or '-' (no '/')")
    taken = registered.get(name) or next((d for d in earlier if d.name == name), None)
    if taken is not None:
        raise ValueError(f"{what} name '{name}' is already registered by plugin '{taken.plugin or 'this one'}'")


class MethodConfigClasses(dict):
    """Method name -> config class, for the config loader: a dict of every name in
    :attr:`Registry.methods` (its items), that also answers, by ``in`` and ``[]``, for any
    ``DISTRIBUTION:METHOD`` (``methods: [kdzoo:kd]``, a ``kdzoo:kd:`` section). A name several
    distributions register is among its names (``in``, iteration) but ``[]`` raises the
    :class:`KdzooError` naming them: a config that selects it, or sets a key under it
    (``--set kd.temperature=2``), fails with that line rather than 'unknown method' or 'unknown key'."""

    def __init__(self, registry: Registry) -> None:
        super().__init__((name, info.config_class) for name, info in registry.methods.items())
        self._registry = registry

    def __iter__(self) -> Iterator[str]:
        yield from super().__iter__()
        yield from self._registry.clashes

    def __len__(self) -> int:
        return super().__len__() + len(self._registry.clashes)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._registry.clashes or self._registry.find(name) is not None)

    def __getitem__(self, name: str) -> type:
        info = self._registry.find(name) if isinstance(name, str) else None
        if info is None:
            raise KeyError(name)
        return info.config_class

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self else default


class _CtrlC(KeyboardInterrupt):
    """The user's own Ctrl-C (a real SIGINT) while plugin code ran: it stops kdzoo as usual."""


@contextlib.contextmanager
def _real_ctrl_c_told_apart() -> Iterator[None]:
    """While plugin code runs, a real SIGINT raises :class:`_CtrlC`, so a plugin that raises
    ``KeyboardInterrupt`` itself is told apart from the user pressing Ctrl-C (handlers can only be set
    in the main thread, and a caller's own SIGINT handling is left as it is)."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def pressed(signum: int, frame: object) -> None:
        raise _CtrlC

    signal.signal(signal.SIGINT, pressed)
    try:
        yield
    except _CtrlC:
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _guarded(call: Callable[[], T]) -> tuple[T | None, str | None]:
    """(``call()``, None), or (None, why it failed in one line) for anything it raises, ``sys.exit`` and
    ``KeyboardInterrupt`` included: plugin code cannot end kdzoo; only the user's Ctrl-C goes through."""
    with _real_ctrl_c_told_apart():
        try:
            return call(), None
        except _CtrlC:
            raise
        except BaseException as exc:  # noqa: BLE001 - a plugin's failure, recorded under its name
            return None, _one_line(exc)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _hook_names(obj: object) -> list[str]:
    return sorted(n for n in dir(obj) if n.startswith("kdzoo_") and callable(getattr(obj, n, None)))


def _check_hook_names(obj: object, known: set[str], owner: str = "") -> None:
    """Every ``kdzoo_*`` attribute must be a known hook: a typo must not be silently ignored."""
    for hook in _hook_names(obj):
        if hook not in known:
            raise ValueError(f"{owner}unknown hook '{hook}'{close_matches(hook, known)}")


RESERVED_NAMES = {"teacher", "student", "data", "optim", "train", "methods"}  # the core's config sections


def _check_hook_arguments(obj: object, owner: str) -> None:
    """A hook may take any subset of its spec's arguments, but no argument the spec does not pass."""
    for hook in _hook_names(obj):
        spec = inspect.signature(getattr(hookspecs.MethodSpec, hook)).parameters
        mine = inspect.signature(getattr(obj, hook)).parameters
        unknown = [a for a in mine if a != "self" and a not in spec]
        if unknown:
            raise ValueError(
                f"{owner}hook '{hook}' asks for unknown argument(s) {', '.join(unknown)}; "
                f"it can take: {', '.join(a for a in spec if a != 'self')}"
            )


def _check_method(info: MethodInfo) -> None:
    if not isinstance(info, MethodInfo):
        raise TypeError(f"kdzoo_register_methods must register MethodInfo objects, got {type(info).__name__}")
    if info.kind not in KINDS:
        raise ValueError(f"method '{info.name}': kind '{info.kind}' is not one of {', '.join(KINDS)}")
    if info.batch not in BATCHES:
        raise ValueError(f"method '{info.name}': batch '{info.batch}' is not one of {', '.join(BATCHES)}")
    if info.name in RESERVED_NAMES or not info.name or "." in info.name or QUALIFIER in info.name:
        raise ValueError(
            f"method name '{info.name}' is reserved or invalid (not one of {sorted(RESERVED_NAMES)}, no '.' or "
            f"'{QUALIFIER}')"
        )
    _check_hook_names(info.factory, _RUN_HOOKS, owner=f"method '{info.name}' implements ")
    _check_hook_arguments(info.factory, owner=f"method '{info.name}': ")


def disabled_plugins() -> set[str]:
    """``KDZOO_DISABLE_PLUGINS``: entry-point names, and ``DISTRIBUTION:NAME`` (normalised) for one distribution's."""
    names = {p.strip() for p in os.environ.get("KDZOO_DISABLE_PLUGINS", "").split(",") if p.strip()}
    return {_plugin_key(*n.rsplit(QUALIFIER, 1)) if QUALIFIER in n else n for n in names}


def _plugin_key(distribution: str, name: str) -> str:
    return f"{distribution_key(distribution)}{QUALIFIER}{name}"


def _entry_points(blocked: set[str]) -> Iterator[tuple[str, Any, str, str, int]]:
    """(plugin name, entry point, distribution, version, how many distributions declare its name) for every
    entry point not blocked; a name that several distributions declare names each plugin DISTRIBUTION:NAME."""
    found: dict[tuple[str, str], tuple[Any, str, str]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        dist_name, version = (dist.metadata["Name"], dist.version) if dist is not None else ("", "")
        key = (distribution_key(dist_name or ep.module), ep.name)
        if key in found or ep.name in blocked or _plugin_key(*key) in blocked:
            continue  # the same distribution seen twice on sys.path is one
        found[key] = (ep, dist_name, version)
    sharing = Counter(name for _, name in found)
    for (dist_key, name), (ep, dist_name, version) in found.items():
        yield (_plugin_key(dist_key, name) if sharing[name] > 1 else name), ep, dist_name, version, sharing[name]


def load_registry(extra: Iterable[tuple[str, object]] = ()) -> Registry:
    """Load every plugin of the ``kdzoo`` entry-point group (plus ``extra`` (name, object) pairs)."""
    import timm  # noqa: F401 - kdzoo's own dependency, imported before the clock starts: a plugin's time is its own

    registry = Registry()
    for name, ep, dist_name, version, sharing in _entry_points(disabled_plugins()):
        if sharing > 1:  # an entry-point name two distributions declare: both load, each said
            registry.shared_entry_points.setdefault(ep.name, []).append((name, dist_name, version))
        started = time.perf_counter()
        plugin, failure = _guarded(ep.load)
        seconds = time.perf_counter() - started
        if seconds > SLOW_IMPORT_S:
            registry.slow[name] = seconds
        if failure is not None:  # report by name, keep the rest
            registry.failures[name] = failure
            continue
        registry.add_plugin(plugin, name, dist_name, version, import_s=seconds)
    for name, plugin in extra:
        registry.add_plugin(plugin, name)
    return registry


_registry: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    if _registry is None:
        _registry = load_registry()
        _name_slow_plugins(_registry)
    return _registry


def _name_slow_plugins(reg: Registry) -> None:
    """One line on stderr per plugin slower than :data:`SLOW_IMPORT_S` to import (rank 0 only)."""
    if os.environ.get("RANK", "0") != "0":
        return
    for name, seconds in sorted(reg.slow.items()):
        print(
            f"kdzoo: plugin '{name}' took {seconds:.1f} s to import; every command that loads plugins waits for it "
            f"(KDZOO_DISABLE_PLUGINS={name} skips it)",
            file=sys.stderr,
        )


def reset_registry() -> None:
    """Forget the loaded plugins (tests, or after installing a plugin in-process)."""
    global _registry
    _registry = None


class _CoreDefaults:
    """The core's fallbacks, called after every method's own implementation."""

    @hookimpl(trylast=True)
    def kdzoo_schedule(self, epochs: int):
        return [Stage("train", epochs)]


def run_manager(methods: dict[str, object]) -> pluggy.PluginManager:
    """A pluggy manager with exactly ``methods`` (name -> method object) registered and checked against
    the per-run hookspecs: for a plugin's own tests, to call a hook as the spec defines it
    (``pm.hook.kdzoo_loss_weights(stage=..., epoch=..., progress=..., plan=None)``). The engine calls a
    run's methods itself (:class:`kdzoo.engine.hooks.RunHooks`), in selection order."""
    pm = pluggy.PluginManager("kdzoo")
    pm.add_hookspecs(hookspecs.MethodSpec)
    pm.register(_CoreDefaults(), name="kdzoo.core")
    try:
        for name, method in methods.items():
            pm.register(method, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise KdzooError(f"method plugin '{exc.plugin_name}': {first_line(exc)}") from None
    return pm
