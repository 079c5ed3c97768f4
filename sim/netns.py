"""A WAN on one machine: each site in its own network namespace, its link shaped.

Loopback has no latency, no bandwidth limit and no loss, so a consortium of processes on
127.0.0.1 never shows what a 40 ms, 50 Mbit/s, lossy path between two hospitals does to
gossip rounds, deadlines and retransmits. Here every site gets its own namespace (its own
``lo``, address, routes and port space) and talks to the others only through the kernel's
real TCP/IP stack, over a veth cable into a bridge, with the cable shaped.

Topology of one run (``tag`` = prefix + a 6-digit random run id)::

    hub namespace   <tag>h    bridge br0, one port per site, named like the site's namespace
    site namespace  <tag><i>  lo, eth0 = 10.<a>.<b>.<i+1>/24, shaped (sim.wan_shaping)

The host's own namespace is untouched: no interface, address, route, qdisc or rule is
added there, so the sites cannot reach the host and the host cannot reach them.

Shaping (:mod:`sim.wan_shaping`): ``netem`` where the kernel has it, one qdisc on each
site's egress; else ``nfqueue``: tbf for the rate on egress, xtables rules for loss and a
delayer process (:mod:`sim.wan_delay`) for delay on ingress. :func:`shaping_backend` says
which one this machine uses, and every Host records it.

Delay semantics, the same on both. Every site has the same profile and a packet from
site A to site B is shaped once: one-way A→B = ``delay_ms`` ± ``jitter_ms`` (normal
distribution, clipped at 0), serialized at A's ``rate_mbit``, lost with probability
``loss_pct``. B's answer is shaped the same way, so a round trip (ping, TCP connect,
request/response) is 2 × ``delay_ms`` (± jitter·√2), and a request/response pair is lost
with probability 1 − (1 − loss)². ``rate_mbit`` is each site's uplink; downlinks are not
shaped, so a site that k peers send to at once receives up to k × rate. With jitter and
``rate_mbit=0`` packets reorder (each gets its own delay); with a rate they stay in order.

Requirements: root, iproute2 (``ip``, ``tc``), a kernel with network namespaces, veth
and bridge, and for a shaped profile either the netem qdisc (CONFIG_NET_SCH_NETEM) or
tbf, xtables' statistic and NFQUEUE with ``iptables`` and NetfilterQueue installed.
:func:`unavailable` says what is missing; an unshaped profile (all zeros) needs neither.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sim.errors import SimError
from sim.wan_profile import UNSHAPED, WanProfile
from sim.wan_shaping import BACKENDS, SITE_IF, Shaper, probe, run, shape, tool

__all__ = [
    "BACKENDS",
    "UNSHAPED",
    "Host",
    "WanProfile",
    "cleanup_stale",
    "shaping_backend",
    "unavailable",
    "wan",
]

BRIDGE = "br0"  # inside the hub namespace
IFNAMSIZ = 15  # longest interface name Linux accepts; hub ports are named like sites
RUN_DIGITS = 6
MAX_SITES = 254  # host addresses .1 … .254 of one /24
# Where each run records its owner (pid and start time), so cleanup_stale can tell a run
# that is still going from one whose process was killed. /run is a tmpfs like /run/netns,
# so both vanish at reboot together. Not in /run/netns: `ip netns list` lists every file.
STATE_DIR = Path("/run/murmur-wan")
_PREFIX = re.compile(r"[a-z]+")
_run = run  # every ip command of the wiring, through one name (tests patch it)
_tool = tool


@dataclass(frozen=True)
class Host:
    """One site: its network namespace, its IPv4 address there (on ``eth0``), and how its
    link is shaped: ``"netem"``, ``"nfqueue"`` (:mod:`sim.wan_shaping`) or ``"none"``."""

    name: str
    address: str
    shaping: str = "none"

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this site's namespace, ready for Popen.

        ``ip netns exec`` also bind-mounts /etc/netns/<name>/* over /etc, should a caller
        want per-site hosts or resolv.conf files. The process must run as root.
        """
        return [_tool("ip") or "ip", "netns", "exec", self.name, *argv]


@functools.cache
def _probe(shaping: str | None) -> str | None:
    """The real test of :func:`unavailable`: build a throwaway namespace, try namespaces,
    veth and bridge and, with ``shaping``, that backend in it, and tear it down."""
    if os.geteuid() != 0:
        return f"network namespaces need root; this process runs as uid {os.geteuid()}"
    if _tool("ip") is None:
        return "`ip` (iproute2) is not installed (looked on PATH and in /usr/sbin)"
    probe_ns = f"murmur-probe-{os.getpid()}"  # has a '-', so never taken for a run's
    steps = [
        ("ip netns add", ["ip", "netns", "add", probe_ns]),
        ("ip netns exec", ["ip", "netns", "exec", probe_ns, "ip", "link", "show", "lo"]),
        (
            "veth",
            [
                "ip",
                "-n",
                probe_ns,
                "link",
                "add",
                "name",
                "va",
                "type",
                "veth",
                "peer",
                "name",
                "vb",
            ],
        ),
        ("bridge", ["ip", "-n", probe_ns, "link", "add", "name", "br", "type", "bridge"]),
    ]
    _delete_netns(probe_ns)  # left by an earlier process with our pid, if any
    try:
        for what, argv in steps:
            try:
                _run(argv)
            except SimError as exc:
                return f"{what} refused: {exc}"
        return None if shaping is None else probe(shaping, probe_ns, "va")
    finally:
        _delete_netns(probe_ns)


def shaping_backend() -> str | None:
    """How :func:`wan` shapes a profile here: ``"netem"`` when the kernel has it, else
    ``"nfqueue"``; None when neither works (:func:`unavailable` says why)."""
    if _probe(None) is not None:
        return None
    return next((b for b in BACKENDS if _probe(b) is None), None)


def unavailable(shaping: bool | str = True) -> str | None:
    """None when :func:`wan` can run here, else one line saying why not.

    Probes by doing it (namespace, ``ip netns exec``, veth, bridge and, with ``shaping``,
    a shaping backend), once per process. ``shaping=True`` asks whether any backend works
    (:func:`shaping_backend` says which one will be used; this says why neither does),
    a backend's name asks about that one, and ``False`` only about the unshaped profile.
    """
    base = _probe(None)
    if base is not None or not shaping:
        return base
    if isinstance(shaping, str):
        if shaping not in BACKENDS:
            raise SimError(f"unknown shaping backend {shaping!r}; known: {', '.join(BACKENDS)}")
        return _probe(shaping)
    if shaping_backend() is not None:
        return None
    return "no way to shape here: " + "; ".join(f"{b}: {_probe(b)}" for b in BACKENDS)


def _namespaces() -> list[str]:
    """Names `ip netns list` shows (each line is ``name`` or ``name (id: N)``)."""
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line]


def _delete_netns(name: str) -> None:
    """Delete a namespace; one already gone counts as deleted (teardown may be repeated).

    Its veth ends and the bridge go with it: a veth pair dies when either end's namespace
    does, so deleting the hub alone already cuts every site off.
    """
    try:
        _run(["ip", "netns", "delete", name])
    except SimError:
        if name in _namespaces():
            raise


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot), which tells it from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def _owner_alive(tag: str) -> bool:
    """Whether the process that made run ``tag`` is still running."""
    try:
        pid, start = (STATE_DIR / tag).read_text().split()
        return _start_time(int(pid)) == start
    except (OSError, ValueError):
        return False


def _name_pattern(prefix: str) -> re.Pattern[str]:
    """A run's namespace names: prefix, run id, then ``h`` (hub) or the site index. The
    prefix is letters only, so "murmur" can never match a run of prefix "murmurx"."""
    return re.compile(rf"{re.escape(prefix)}(\d{{{RUN_DIGITS}}})(h|\d+)")


def _check_prefix(prefix: str) -> None:
    if not _PREFIX.fullmatch(prefix):
        raise SimError(f"namespace prefix {prefix!r} must be lower-case letters only")


def _claim(prefix: str) -> tuple[str, Path]:
    """A fresh run tag, recorded in STATE_DIR with our pid before any namespace exists."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    pattern = _name_pattern(prefix)
    taken = {m[1] for name in _namespaces() if (m := pattern.fullmatch(name))}
    for _ in range(100):
        run = f"{secrets.randbelow(10**RUN_DIGITS):0{RUN_DIGITS}d}"
        if run in taken:
            continue
        path = STATE_DIR / f"{prefix}{run}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as out:
            out.write(f"{os.getpid()} {_start_time(os.getpid())}\n")
        return f"{prefix}{run}", path
    raise SimError(f"no free run id for namespace prefix {prefix!r} after 100 tries")


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.<a>.<b>.0/24 that no route of the host's namespace covers or contains.

    The sites never see the host's routes, so this is not for their sake: it keeps the
    isolation honest (a host-side connect to a site address goes nowhere real) and keeps
    site addresses in logs from being mistaken for a machine on the host's networks.
    """
    used: list[ipaddress.IPv4Network] = []
    for route in json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]) or "[]"):
        dst = route.get("dst", "default")
        if dst != "default":
            used.append(ipaddress.IPv4Network(dst, strict=False))
    for _ in range(1000):
        a, b = 1 + secrets.randbelow(254), secrets.randbelow(256)
        subnet = ipaddress.IPv4Network(f"10.{a}.{b}.0/24")
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise SimError("every 10.x.y.0/24 tried overlaps a route of this host; none is free")


def _teardown(created: list[str], state: Path | None) -> None:
    """Delete every namespace in ``created``; a Ctrl-C on the way is held until all are."""
    failures: list[str] = []
    interrupted: KeyboardInterrupt | None = None
    for name in reversed(created):
        for _ in range(3):
            try:
                _delete_netns(name)
                break
            except KeyboardInterrupt as exc:  # may have killed `ip` half-way: try again
                interrupted = exc
            except SimError as exc:
                failures.append(str(exc))
                break
    if state is not None:
        state.unlink(missing_ok=True)
    if interrupted is not None:
        raise interrupted
    if failures:
        raise SimError("WAN teardown left namespaces behind: " + "; ".join(failures))


def _stop(shapers: list[Shaper]) -> list[str]:
    """Stop every site's delayer (a second call finds them stopped); their problems."""
    return [problem for shaper in shapers if (problem := shaper.stop()) is not None]


@contextmanager
def wan(
    n: int, profile: WanProfile, prefix: str = "murmur", shaping: str | None = None
) -> Iterator[list[Host]]:
    """n sites, each in its own namespace, bridged through a hub, each link shaped.

    ``shaping`` picks the backend (``"netem"`` or ``"nfqueue"``); None takes
    :func:`shaping_backend`'s, and each Host records the one used. Yields the sites in
    index order. Everything made is deleted on exit, also after an exception or Ctrl-C;
    processes the caller started inside are not killed (stop them first: once the hub is
    gone they sit in a namespace with no link). A run killed before its exit leaves
    namespaces that :func:`cleanup_stale` removes. On a normal exit, a delayer that died
    or lost packets during the run (nfqueue) fails it with a SimError, after teardown.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SITES:
        raise SimError(f"a WAN needs 1 to {MAX_SITES} sites, not {n!r}")
    _check_prefix(prefix)
    longest = len(prefix) + RUN_DIGITS + len(str(n - 1))
    if longest > IFNAMSIZ:
        raise SimError(
            f"namespace prefix {prefix!r} is too long for {n} sites: names would have "
            f"{longest} characters and interface names may have {IFNAMSIZ} "
            f"(at most {IFNAMSIZ - RUN_DIGITS - len(str(n - 1))} letters)"
        )
    reason = unavailable(shaping=(shaping or True) if profile.shaped else False)
    if reason is not None:
        raise SimError(f"cannot build the WAN here: {reason}")
    backend = (shaping or shaping_backend() or "none") if profile.shaped else "none"
    created: list[str] = []
    shapers: list[Shaper] = []
    state: Path | None = None
    problems: list[str] = []
    try:
        tag, state = _claim(prefix)
        subnet = _free_subnet()
        hub = f"{tag}h"
        created.append(hub)
        _run(["ip", "netns", "add", hub])
        _run(["ip", "-n", hub, "link", "set", "lo", "up"])
        _run(["ip", "-n", hub, "link", "add", "name", BRIDGE, "type", "bridge"])
        _run(["ip", "-n", hub, "link", "set", BRIDGE, "up"])
        hosts: list[Host] = []
        for i, address in zip(range(n), subnet.hosts(), strict=False):
            site = f"{tag}{i}"
            created.append(site)
            _run(["ip", "netns", "add", site])
            _run(["ip", "-n", site, "link", "set", "lo", "up"])
            # Made inside the namespaces themselves: nothing appears in the host's, even
            # for a moment, and the hub port's name need only be unique in the hub.
            veth = ["ip", "-n", site, "link", "add", "name", SITE_IF, "type", "veth"]
            _run([*veth, "peer", "name", site, "netns", hub])
            _run(["ip", "-n", hub, "link", "set", site, "master", BRIDGE, "up"])
            _run(["ip", "-n", site, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", SITE_IF])
            _run(["ip", "-n", site, "link", "set", SITE_IF, "up"])
            shapers.append(shape(site, profile, backend, seed=i))
            hosts.append(Host(site, str(address), backend))
        yield hosts
        problems = _stop(shapers)
    finally:
        _stop(shapers)  # after an exception: stopped all the same, the exception wins
        _teardown(created, state)
    if problems:
        raise SimError("the WAN's shaping failed during the run: " + "; ".join(problems))


def cleanup_stale(prefix: str = "murmur") -> list[str]:
    """Delete namespaces that runs with ``prefix`` left when their process was killed.

    A run is stale when the process recorded for it in STATE_DIR is gone (or the record
    is); runs still going are left alone. Returns the namespaces deleted, sorted.
    Processes still inside a deleted namespace keep running, cut off from every peer;
    delayers (:mod:`sim.wan_delay`) are not among them: they exit with their parent.
    """
    _check_prefix(prefix)
    pattern = _name_pattern(prefix)
    removed: list[str] = []
    for name in _namespaces():
        match = pattern.fullmatch(name)
        if match and not _owner_alive(prefix + match[1]):
            _delete_netns(name)
            removed.append(name)
    # Records of dead runs go too, but only after their namespaces.
    for path in STATE_DIR.glob(f"{prefix}*"):
        run = path.name[len(prefix) :]
        if run.isdigit() and len(run) == RUN_DIGITS and not _owner_alive(path.name):
            path.unlink(missing_ok=True)
    return sorted(removed)
