"""NCCL's rule on a CPU machine: a collective takes only tensors on the group's device.

NCCL refuses host tensors ("No backend type associated with device type cpu"); gloo takes anything,
and on a machine without a GPU every tensor is on the host, so a plain CPU run cannot tell a tensor
placed on the run's device from one left where a factory put it. This module tells them apart by
where each tensor came from: a tensor a factory made without ``device=`` (``torch.tensor([1.0])``,
``torch.from_numpy``), or moved to the host on purpose (``.cpu()``, ``.to("cpu")``), is *on the host by
construction*, and so is everything computed from it; ``.to(device)`` with the run's device places it.
:func:`install` wraps the collectives kdzoo calls so that they refuse a tensor on the host by
construction (what NCCL would refuse on a GPU) and one not on the group's device, and counts the
rest. Run under torchrun by ``nccl_rules_worker.py``.
"""

from __future__ import annotations

import collections
import functools
import sys
import traceback

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as functional
from torch.overrides import TorchFunctionMode

_HOST = "_kdzoo_test_on_host"

#: factories that place their result on the default device unless given ``device=``
FACTORIES = {
    torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange,
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.linspace, torch.eye, torch.scalar_tensor,
}  # fmt: skip
#: always on the host, whatever they are given
HOST_FACTORIES = {torch.from_numpy, torch.frombuffer}
MOVES = {torch.Tensor.to, torch.Tensor.cuda}


def on_host(t: torch.Tensor) -> bool:
    return getattr(t, _HOST, False)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, torch.Tensor):
                yield item
    elif isinstance(value, dict):
        yield from (item for item in value.values() if isinstance(item, torch.Tensor))


def _mark(result, host: bool) -> None:
    for t in _tensors(result):
        try:
            setattr(t, _HOST, host)
        except (AttributeError, RuntimeError):  # a tensor type that takes no attributes
            pass


def _placed(args, kwargs) -> bool | None:
    """For ``Tensor.to``: ``True`` when it names a device other than the literal host, ``False`` for the
    host named as such, ``None`` when it only changes the dtype."""
    for value in (*args[1:], kwargs.get("device")):
        if isinstance(value, str):
            return value != "cpu"
        if isinstance(value, (torch.device, torch.Tensor)):
            return True
    return None


class Provenance(TorchFunctionMode):
    """Marks the tensors that are on the host by construction (see the module's docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if func in FACTORIES:
            _mark(result, kwargs.get("device") is None)
        elif func in HOST_FACTORIES or func is torch.Tensor.cpu:
            _mark(result, True)
        elif func in MOVES:
            placed = _placed(args, kwargs)
            _mark(result, on_host(args[0]) if placed is None else not placed)
        elif getattr(func, "__name__", "").endswith("_") and args and result is args[0]:
            pass  # in place: the tensor stays where it is
        elif any(on_host(t) for value in (*args, *kwargs.values()) for t in _tensors(value)):
            _mark(result, True)
        return result


COUNTS: collections.Counter = collections.Counter()


def _refusing(name: str, collective):
    @functools.wraps(collective)
    def checked(*args, **kwargs):
        group_device = torch.device("cuda", torch.cuda.current_device()) if _nccl() else torch.device("cpu")
        for value in (*args, *kwargs.values()):
            for t in _tensors(value):
                where = "".join(traceback.format_stack(limit=14)[:-1])
                if on_host(t) or t.device != group_device:
                    sys.stderr.write(f"refused by {name}:\n{where}")  # kdzoo shows the error's first line only
                if on_host(t):
                    raise RuntimeError(
                        f"{name}: a tensor on the host by construction reached a collective, which NCCL "
                        f"refuses (No backend type associated with device type cpu):\n{where}"
                    )
                if t.device != group_device:
                    raise RuntimeError(
                        f"{name}: a tensor on {t.device}, the group's device is {group_device}:\n{where}"
                    )
        COUNTS[name] += 1
        return collective(*args, **kwargs)

    return checked


def _nccl() -> bool:
    return dist.is_initialized() and dist.get_backend() == dist.Backend.NCCL


#: every tensor collective kdzoo and its plugins call, by module
COLLECTIVES = {
    dist: ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter_tensor", "reduce"),
    functional: ("all_reduce", "all_gather_tensor", "all_gather_single", "reduce_scatter_tensor", "broadcast"),
}


def install() -> Provenance:
    """Wrap the collectives (they count what they pass in :data:`COUNTS`) and enter :class:`Provenance`
    for the rest of the process."""
    for module, names in COLLECTIVES.items():
        for name in names:
            if hasattr(module, name):
                setattr(module, name, _refusing(f"{module.__name__}.{name}", getattr(module, name)))
    mode = Provenance()
    mode.__enter__()
    return mode
