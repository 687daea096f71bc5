"""The registry of methods: plugin discovery, and the per-run plugin manager.

Built-in methods come in through the ``kdzoo`` entry-point group of kdzoo's own pyproject.toml,
exactly the door a third-party package uses; this module never imports a method by name. A plugin
that fails to import, names a hook that does not exist, or registers a method name already taken
is recorded as a failure under its own name and the other plugins keep working; so is one that
calls ``sys.exit`` or raises ``KeyboardInterrupt`` (any ``BaseException``) while loading: a plugin cannot
stop kdzoo, only the user's Ctrl-C can. Each plugin's import is timed; one slower than
:data:`SLOW_IMPORT_S` is named in one line, since every command that loads plugins waits for it.
``KDZOO_DISABLE_PLUGINS=name1,name2`` skips plugins by entry-point name.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pluggy

from kdzoo import hookspecs
from kdzoo.api import BATCHES, KINDS, MethodInfo, Stage, hookimpl
from kdzoo.errors import KdzooError, close_matches, first_line, unknown_method

ENTRY_POINT_GROUP = "kdzoo"
_RUN_HOOKS = {name for name in dir(hookspecs.MethodSpec) if name.startswith("kdzoo_")}
_DISCOVERY_HOOKS = {name for name in dir(hookspecs.DiscoverySpec) if name.startswith("kdzoo_")}
#: seconds: a plugin that takes longer to import is named (it delays every command that loads plugins)
SLOW_IMPORT_S = 5.0
T = TypeVar("T")


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
    plugins slower than :data:`SLOW_IMPORT_S` to import (seconds)."""

    methods: dict[str, MethodInfo] = field(default_factory=dict)
    plugins: list[LoadedPlugin] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    slow: dict[str, float] = field(default_factory=dict)

    def get(self, name: str) -> MethodInfo:
        if name not in self.methods:
            raise unknown_method(name, self.methods, self.failures)
        return self.methods[name]

    def config_classes(self) -> dict[str, type]:
        return {name: info.config_class for name, info in self.methods.items()}

    def add_plugin(
        self, plugin: object, name: str, distribution: str = "", version: str = "", import_s: float = 0.0
    ) -> None:
        """Load one plugin object (usually a module); failures are recorded, never raised."""
        found: list[MethodInfo] = []
        _, failure = _guarded(lambda: self._discover(plugin, name, found))
        if failure is not None:  # a broken plugin must not take the others (or kdzoo) down
            self.failures[name] = failure
            return
        loaded = LoadedPlugin(name, distribution, version, hooks=_hook_names(plugin), import_s=import_s)
        for info in found:
            self.methods[info.name] = replace(info, plugin=name, distribution=distribution, version=version)
            loaded.methods.append(info.name)
            loaded.hooks = sorted(set(loaded.hooks) | set(_hook_names(info.factory)))
        self.plugins.append(loaded)

    def _discover(self, plugin: object, name: str, found: list[MethodInfo]) -> None:
        """Call ``plugin``'s discovery hooks: its methods into ``found`` (checked), its models into timm."""
        pm = pluggy.PluginManager("kdzoo")
        pm.add_hookspecs(hookspecs.DiscoverySpec)
        pm.register(plugin, name=name)
        _check_hook_names(plugin, _DISCOVERY_HOOKS)
        for impl in pm.hook.kdzoo_register_methods.get_hookimpls():
            impl.function(**{arg: found.append for arg in impl.argnames})
        for impl in pm.hook.kdzoo_register_models.get_hookimpls():
            impl.function(**{arg: _register_timm_model for arg in impl.argnames})
        for info in found:
            _check_method(info, self.methods)


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


def _check_method(info: MethodInfo, existing: dict[str, MethodInfo]) -> None:
    if not isinstance(info, MethodInfo):
        raise TypeError(f"kdzoo_register_methods must register MethodInfo objects, got {type(info).__name__}")
    if info.name in existing:
        raise ValueError(f"method name '{info.name}' is already registered by plugin '{existing[info.name].plugin}'")
    if info.kind not in KINDS:
        raise ValueError(f"method '{info.name}': kind '{info.kind}' is not one of {', '.join(KINDS)}")
    if info.batch not in BATCHES:
        raise ValueError(f"method '{info.name}': batch '{info.batch}' is not one of {', '.join(BATCHES)}")
    if info.name in RESERVED_NAMES or not info.name or "." in info.name:
        raise ValueError(
            f"method name '{info.name}' is reserved or invalid (not one of {sorted(RESERVED_NAMES)}, no '.')"
        )
    _check_hook_names(info.factory, _RUN_HOOKS, owner=f"method '{info.name}' implements ")
    _check_hook_arguments(info.factory, owner=f"method '{info.name}': ")


def disabled_plugins() -> set[str]:
    return {p.strip() for p in os.environ.get("KDZOO_DISABLE_PLUGINS", "").split(",") if p.strip()}


def load_registry(extra: Iterable[tuple[str, object]] = ()) -> Registry:
    """Load every plugin of the ``kdzoo`` entry-point group (plus ``extra`` (name, object) pairs)."""
    import timm  # noqa: F401 - kdzoo's own dependency, imported before the clock starts: a plugin's time is its own

    registry = Registry()
    blocked = disabled_plugins()
    seen: set[str] = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in blocked or ep.name in seen:
            continue
        seen.add(ep.name)
        dist = getattr(ep, "dist", None)
        dist_name, version = (dist.metadata["Name"], dist.version) if dist is not None else ("", "")
        started = time.perf_counter()
        plugin, failure = _guarded(ep.load)
        seconds = time.perf_counter() - started
        if seconds > SLOW_IMPORT_S:
            registry.slow[ep.name] = seconds
        if failure is not None:  # report by name, keep the rest
            registry.failures[ep.name] = failure
            continue
        registry.add_plugin(plugin, ep.name, dist_name, version, import_s=seconds)
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
    """A plugin manager for one run with exactly the selected method instances registered."""
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


def call_hook(pm: pluggy.PluginManager, hook: str, **kwargs: Any) -> Any:
    """Call ``hook``; an exception raised inside a method's implementation becomes a one-line
    :class:`KdzooError` naming the method, the hook and the error."""
    try:
        return getattr(pm.hook, hook)(**kwargs)
    except KdzooError:
        raise
    except Exception as exc:
        culprit = _culprit(pm, exc)
        if culprit is None:
            raise
        raise KdzooError(f"method '{culprit}' failed in {hook}: {_one_line(exc)}") from exc


def call_hook_impl(impl: Any, hook: str, kwargs: dict[str, Any]) -> Any:
    """One method's implementation of ``hook`` with the arguments it asks for; an exception it
    raises becomes a one-line :class:`KdzooError` naming the method and the hook."""
    try:
        return impl.function(*(kwargs[arg] for arg in impl.argnames))
    except KdzooError:
        raise
    except Exception as exc:
        raise KdzooError(f"method '{impl.plugin_name}' failed in {hook}: {_one_line(exc)}") from exc


def _culprit(pm: pluggy.PluginManager, exc: BaseException) -> str | None:
    """The registered plugin whose code raised: the innermost traceback frame whose ``self`` is one."""
    plugins = {id(p): name for name, p in pm.list_name_plugin()}
    tb, found = exc.__traceback__, None
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in plugins:
            found = plugins[id(owner)]
        tb = tb.tb_next
    return found
