"""One run's hooks: the selected methods' implementations, called in selection order.

Plugins are discovered through pluggy (entry points, registration, validation: :mod:`kdzoo.registry`);
within a run the engine calls the methods it built directly. Each hook is called on every selected
method that implements it, in the order the methods were selected, then on the core's own listeners
(the reporters, and any observer registered on the run), each with the subset of the hook's arguments
its implementation asks for. An implementation marked ``tryfirst``/``trylast`` is called before or
after the others. An exception raised inside a method's implementation becomes one line naming the
method (or the listener) and the hook; its traceback stays attached (``KDZOO_DEBUG=1`` shows it).

The two hooks called at every step (``kdzoo_loss_weights``, ``kdzoo_compute_losses``) the objective
calls itself, from the implementations found here once (:attr:`RunHooks.found`), with the same
argument subsets and the same one-line failures (:meth:`RunHooks.failure`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdzoo.errors import KdzooError, error_line

_MARK = "kdzoo_impl"  # the attribute kdzoo.hookimpl puts on an implementation


@dataclass(frozen=True)
class Implementation:
    """One owner's implementation of a hook: ``owner`` is the method's name (or a listener's)."""

    owner: str
    function: Callable[..., Any]
    arguments: tuple[str, ...]
    method: bool  #: a selected method's, rather than a listener's
    order: int  #: 0 tryfirst, 1 as registered, 2 trylast


class RunHooks:
    """The hooks of one run: ``methods`` (name -> method object, in selection order) and listeners."""

    def __init__(self, methods: dict[str, object]):
        self._owners: list[tuple[str, object, bool]] = [(name, obj, True) for name, obj in methods.items()]
        #: hook -> its implementations in calling order, found on first use; registering or
        #: unregistering a listener clears it
        self.found: dict[str, list[Implementation]] = {}
        #: what each method's own hooks receive and no other method's: its plan (``plan``, what its
        #: ``kdzoo_plan`` returned) and its trainable modules (``modules``)
        self.own: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ listeners
    def register(self, listener: object, name: str | None = None) -> None:
        """Call ``listener``'s marked implementations too, after the methods' (a reporter, an observer)."""
        self._owners.append((name or type(listener).__name__, listener, False))
        self.found.clear()

    def unregister(self, listener: object) -> None:
        self._owners = [entry for entry in self._owners if entry[1] is not listener]
        self.found.clear()

    # ------------------------------------------------------------------ calls
    def implementations(self, hook: str) -> list[Implementation]:
        if hook not in self.found:
            found = []
            for owner, obj, is_method in self._owners:
                function = getattr(obj, hook, None)
                options = getattr(function, _MARK, None)
                if function is None or options is None:
                    continue
                arguments = tuple(inspect.signature(function).parameters)
                order = 0 if options.get("tryfirst") else 2 if options.get("trylast") else 1
                found.append(Implementation(owner, function, arguments, is_method, order))
            self.found[hook] = sorted(found, key=lambda impl: impl.order)  # stable: selection order kept
        return self.found[hook]

    def call(self, hook: str, **kwargs: Any) -> list[Any]:
        """Every implementation's result that is not ``None``, in order."""
        return [r for _, r in self.results(hook, **kwargs) if r is not None]

    def results(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """(owner, result) of every implementation, in order."""
        return [(impl.owner, self.invoke(impl, hook, kwargs)) for impl in self.implementations(hook)]

    def first(self, hook: str, **kwargs: Any) -> Any:
        """The first result that is not ``None`` (hooks with one answer: ``kdzoo_schedule``)."""
        for impl in self.implementations(hook):
            result = self.invoke(impl, hook, kwargs)
            if result is not None:
                return result
        return None

    def call_one(self, owner: str, hook: str, **kwargs: Any) -> Any:
        """The result of ``owner``'s implementation of ``hook`` (``None`` when it has none)."""
        for impl in self.implementations(hook):
            if impl.owner == owner:
                return self.invoke(impl, hook, kwargs)
        return None

    def invoke(self, impl: Implementation, hook: str, kwargs: dict[str, Any]) -> Any:
        """``impl`` called with the arguments it asks for (its own method's ``plan`` and ``modules``
        among them)."""
        own = self.own.get(impl.owner, {})
        try:
            return impl.function(*[own[a] if a in own else kwargs[a] for a in impl.arguments])
        except KdzooError:
            raise
        except Exception as exc:
            raise self.failure(impl, hook, exc) from exc

    def failure(self, impl: Implementation, hook: str, exc: Exception) -> KdzooError:
        """The one line for ``impl`` raising ``exc`` in ``hook``, naming the method (or the listener)."""
        who = f"method '{impl.owner}'" if impl.method else f"'{impl.owner}' (registered on the run)"
        return KdzooError(f"{who} failed in {hook}: {error_line(exc)}")
