"""A consortium of real node processes across a shaped WAN: one site per namespace.

:func:`run_wan` builds the WAN (:func:`sim.netns.wan`), starts node i inside site i's
namespace listening on that site's own address, runs the consortium to completion
(:func:`sim.process.run_processes`) and tears everything down. Needs root; see
:func:`sim.netns.unavailable`.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sim.consortium import ConsortiumSpec
from sim.netns import WanProfile, wan
from sim.prep import FederatedData
from sim.process import run_processes
from sim.results import MethodResult


def run_wan(
    out: Path,
    data: FederatedData,
    spec: ConsortiumSpec,
    profile: WanProfile,
    timeout_s: float = 900.0,
    shaping: str | None = None,
) -> tuple[MethodResult, dict[str, Any]]:
    """Run ``spec`` with each site in its own namespace, every link shaped by ``profile``.

    Returns the run's result (as :func:`run_processes`'s) and how it ran: the profile,
    the shaping backend (``netem``, ``nfqueue`` or ``none``) and each site's address.
    Metrics endpoints are off: a namespaced node's loopback is its own.
    """
    with wan(len(data.train), profile, shaping=shaping) as hosts:
        spec = replace(spec, hosts=tuple(h.address for h in hosts), metrics=False)
        prefixes = [h.command([]) for h in hosts]
        result = run_processes(out, data, spec, [], timeout_s=timeout_s, prefixes=prefixes)
    info = {
        "profile": asdict(profile),
        "shaping": hosts[0].shaping,
        "addresses": [h.address for h in hosts],
    }
    return result, info
