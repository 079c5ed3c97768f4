"""Simulator methods by name: ``--methods central,local,fedavg,dpsgd,murmur,murmur-gt``.

Each is a :data:`MethodRunner` in a :class:`murmur.registry.Registry`; a package adds its
own with :func:`register_method` and ``murmur sim --methods …,name`` runs it beside the
built-in ones, on the same data, model, trainer and clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from murmur.registry import Registry
from node.errors import ConfigError
from node.gossip.compress import Compressor, Identity, stacked
from sim.results import MethodResult, Tick

if TYPE_CHECKING:
    from sim.engine import Simulation

MaybeCompressor = Compressor | None
MethodRunner = Callable[["Simulation", str, MaybeCompressor, Tick | None], MethodResult]
"""(the simulation, the method's name, the run's compressor, a per-round tick)."""
METHODS: Registry[MethodRunner] = Registry("method", ConfigError)


def register_method(name: str, runner: MethodRunner) -> None:
    """Make ``--methods …,name`` run ``runner`` beside the built-in methods."""
    METHODS.register(name, runner)


def _central(sim: Simulation, _name: str, _c: MaybeCompressor, tick: Tick | None) -> MethodResult:
    return sim._run_central(tick)


def _independent(
    sim: Simulation, name: str, _c: Compressor | None, tick: Tick | None
) -> MethodResult:
    return sim._run_independent(name, tick)


def _dpsgd(sim: Simulation, name: str, _c: MaybeCompressor, tick: Tick | None) -> MethodResult:
    return sim._run_gossip(name, Identity(), 1.0, tick)


def _choco(
    sim: Simulation, name: str, compressor: Compressor | None, tick: Tick | None
) -> MethodResult:
    if compressor is None:
        raise ConfigError(f"method {name!r} needs a compressor")
    tracking = name == "murmur-gt"
    return sim._run_gossip(name, stacked(compressor, 2 if tracking else 1), None, tick)


for _name, _runner in (
    ("central", _central),
    ("local", _independent),
    ("fedavg", _independent),
    ("dpsgd", _dpsgd),
    ("murmur", _choco),
    ("murmur-gt", _choco),
):
    register_method(_name, _runner)
METHOD_NAMES = METHODS.names()
