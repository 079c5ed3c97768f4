"""How each site's link is shaped: the two ways a kernel can apply a WanProfile.

``netem`` (CONFIG_NET_SCH_NETEM): one qdisc on the site's ``eth0`` does it all: delay ±
jitter, rate and loss on the site's egress (:meth:`WanProfile.netem_args`).

``nfqueue``, for kernels without netem, from parts most kernels have (tbf, xtables'
statistic match and NFQUEUE target, nfnetlink_queue):

- rate: ``tc qdisc add dev eth0 root tbf`` on the site's egress (:meth:`WanProfile.tbf_args`);
- loss: ``iptables -t raw -A PREROUTING -i eth0 -m statistic --mode random
  --probability p -j DROP``, on the *receiving* site's ingress;
- delay ± jitter: the next rule, ``-j NFQUEUE --queue-num 0 --queue-bypass``, hands every
  arriving packet to :mod:`sim.wan_delay`, a process in that site's namespace that holds
  it for its drawn delay and then accepts it.

Why on ingress, when netem works on egress. Every site has the same profile and every
packet crosses exactly one sender's ``eth0`` and one receiver's, so A→B sees the same
delay and loss either way; what differs is what the *sender's* kernel makes of it. A
packet dropped in OUTPUT is no loss: the kernel returns EPERM to the socket (measured
here: 103 of 500 UDP ``sendto`` calls failed at p = 0.2), and TCP keeps the segment and
sends it again instead of detecting a loss. A packet held in NFQUEUE on OUTPUT still
counts against its TCP socket's small-queue budget (TSQ, ~1 ms of its pacing rate),
which netem escapes by orphaning what it delays: a 5 MB transfer over 40 ms took 70 s
instead of 4.4 s. Past the veth the packet belongs to no socket, so on ingress both
are what a real path does. The rate stays on egress: it is the site's uplink (a packet
lost on the way has used it, as on a real path; netem drops before its rate).

Ordering as netem's: with jitter and no rate packets reorder (each is due at its own
time); with a rate netem keeps them in order, and so does the delayer (``--in-order``,
per sender address). ARP is neither delayed nor lost (xtables sees IP only); netem
delays it too, which only the first packet to a new neighbour notices. The delayer is a
Python process: on a busy machine its timer may fire a few ms late, where netem's (in
the kernel) does not; the delayed counts and drops it reports are checked at teardown.
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sim.errors import SimError
from sim.wan_profile import WanProfile, number

__all__ = ["BACKENDS", "SITE_IF", "Shaper", "probe", "run", "shape", "tool"]

BACKENDS = ("netem", "nfqueue")  # in order of preference: netem is one kernel qdisc
SITE_IF = "eth0"  # a site's one link, inside its own namespace
QUEUE = 0  # NFQUEUE numbers are per namespace: every site uses the same one
READY_S = 20.0  # how long a delayer may take to import and bind its queue
_IPTABLES = ("iptables-nft", "iptables-legacy")  # both reach xtables' NFQUEUE target
_TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
_ROOT = Path(__file__).resolve().parent.parent  # what `python -m sim.wan_delay` needs


def tool(name: str) -> str | None:
    """Path of ``ip``, ``tc`` or ``iptables-*``: PATH first, then the sbin folders a
    non-login PATH lacks."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _TOOL_DIRS:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def run(argv: Sequence[str], timeout: float = 30.0) -> str:
    """Run one ``ip``/``tc``/``iptables`` command; every failure is a SimError naming the
    command and what it printed, never a bare CalledProcessError."""
    shown = shlex.join(argv)
    found = tool(argv[0])
    if found is None:
        raise SimError(f"`{argv[0]}` is not installed: cannot run `{shown}`")
    try:
        done = subprocess.run(
            [found, *argv[1:]], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise SimError(f"`{shown}` did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise SimError(f"`{shown}` could not start: {exc}") from exc
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip() or "no output").replace("\n", " ")
        raise SimError(f"`{shown}` failed (exit {done.returncode}): {said}")
    return done.stdout


_found: dict[str, str] = {}  # what the nfqueue probe found: "iptables" → the variant that works


def _in(site: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", site, *argv]


def _rules(site: str, profile: WanProfile, iptables: str, dev: str = SITE_IF) -> list[list[str]]:
    """The nfqueue backend's xtables rules for one site, loss before delay."""
    base = [iptables, "-w", "-t", "raw", "-A", "PREROUTING", "-i", dev]
    rules = []
    if profile.loss_pct > 0:
        p = number(profile.loss_pct / 100)
        rules.append(
            [*base, "-m", "statistic", "--mode", "random", "--probability", p, "-j", "DROP"]
        )
    if profile.delayed:
        rules.append([*base, "-j", "NFQUEUE", "--queue-num", str(QUEUE), "--queue-bypass"])
    return [_in(site, rule) for rule in rules]


@dataclass
class Shaper:
    """What shaping left running in one site: its delayer process, if it has one."""

    site: str
    proc: subprocess.Popen[bytes] | None = None
    stderr: IO[bytes] | None = None

    def _said(self) -> str:
        if self.stderr is None:
            return ""
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace").strip()
        return f": {text[-500:]}" if text else ""

    def stop(self) -> str | None:
        """Stop the delayer (it releases what it holds); the problem it had, or None."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        code = proc.poll()
        if code is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        said = self._said()
        if self.stderr is not None:
            self.stderr.close()
        if code is not None:
            return (
                f"the delayer of {self.site} died during the run (exit {code}), so its "
                f"packets passed undelayed from then on{said}"
            )
        if proc.returncode != 0:
            return f"the delayer of {self.site} did not stop cleanly (exit {proc.returncode}){said}"
        try:
            stats = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return f"the delayer of {self.site} exited without its counts{said}"
        dropped = int(stats.get("queue_dropped", 0)) + int(stats.get("user_dropped", 0))
        if dropped:
            return f"the delay line of {self.site} lost {dropped} packets (counts {stats}){said}"
        return None


def _start_delayer(site: str, profile: WanProfile, seed: int) -> Shaper:
    """The delayer of one site, started and bound to its queue (it said ``ready``)."""
    argv = [sys.executable, "-m", "sim.wan_delay", "--queue", str(QUEUE)]
    argv += ["--delay-ms", number(profile.delay_ms), "--jitter-ms", number(profile.jitter_ms)]
    argv += ["--seed", str(seed), "--max-len", str(profile.queue_limit())]
    if profile.rate_mbit > 0:
        argv.append("--in-order")
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_ROOT), *([path] if path else [])]))
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 (the Shaper closes it when it stops)
    shaper = Shaper(site, stderr=stderr)
    try:
        shaper.proc = subprocess.Popen(
            [tool("ip") or "ip", "netns", "exec", site, *argv],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
        )
    except OSError as exc:
        stderr.close()
        raise SimError(f"the delayer of {site} could not start: {exc}") from exc
    assert shaper.proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(shaper.proc.stdout, selectors.EVENT_READ)
        line = shaper.proc.stdout.readline() if sel.select(READY_S) else b""
    if line.strip() != b"ready":
        problem = shaper.stop() or f"it said {line!r}"
        raise SimError(f"the delayer of {site} did not get ready within {READY_S:g} s: {problem}")
    return shaper


def shape(site: str, profile: WanProfile, backend: str, seed: int) -> Shaper:
    """Shape ``site``'s link (its namespace exists, ``eth0`` is up) with ``backend``.

    Netem drops, delays and counts whole skbs, tbf and xtables too; TCP's 64 KB GSO
    bursts would make "1% loss" lose 40 segments at a time. One segment per skb makes it
    per packet, as on a real path, on both backends. A Shaper is returned only when all
    is in place; on failure nothing of it is left running.
    """
    if not profile.shaped:
        return Shaper(site)
    run(["ip", "-n", site, "link", "set", SITE_IF, "gso_max_segs", "1"])
    if backend == "netem":
        netem = ["tc", "-n", site, "qdisc", "add", "dev", SITE_IF, "root", "netem"]
        run([*netem, *profile.netem_args()])
        return Shaper(site)
    if backend != "nfqueue":
        raise SimError(f"unknown shaping backend {backend!r}; known: {', '.join(BACKENDS)}")
    if profile.rate_mbit > 0:
        run(["tc", "-n", site, "qdisc", "add", "dev", SITE_IF, "root", "tbf", *profile.tbf_args()])
    shaper = _start_delayer(site, profile, seed) if profile.delayed else Shaper(site)
    try:
        for rule in _rules(site, profile, _found.get("iptables", _IPTABLES[0])):
            run(rule)
    except BaseException:
        shaper.stop()
        raise
    return shaper


@functools.cache
def _tools_for(backend: str) -> str | None:
    """Which command the backend lacks here (None: all present)."""
    if backend == "netem":
        return None if tool("tc") else "`tc` (iproute2) is not installed"
    if tool("tc") is None:
        return "`tc` (iproute2) is not installed"
    if not any(tool(name) for name in _IPTABLES):
        return f"neither {' nor '.join(_IPTABLES)} is installed (Debian: apt-get install iptables)"
    return None


def probe(backend: str, ns: str, dev: str) -> str | None:
    """None when ``backend`` can shape here, else why not: tried in the scratch namespace
    ``ns`` on its (down) interface ``dev``, which the caller deletes afterwards."""
    missing = _tools_for(backend)
    if missing is not None:
        return missing
    test = WanProfile(delay_ms=1, jitter_ms=1, rate_mbit=1, loss_pct=1)
    if backend == "netem":
        try:
            run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "netem", *test.netem_args()])
        except SimError as exc:
            if "kind is unknown" in str(exc):
                return f"this kernel has no netem (CONFIG_NET_SCH_NETEM is off): {exc}"
            return f"netem qdisc refused: {exc}"
        return None
    try:
        run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", *test.tbf_args()])
    except SimError as exc:
        return f"tbf qdisc refused (CONFIG_NET_SCH_TBF): {exc}"
    refused = []
    for name in (n for n in _IPTABLES if tool(n)):
        try:
            for rule in _rules(ns, test, name, dev):
                run(rule)
        except SimError as exc:
            refused.append(str(exc))
            continue
        _found["iptables"] = name
        break
    else:
        return "xtables refused the statistic match or NFQUEUE target: " + "; ".join(refused)
    try:
        problem = _start_delayer(ns, test, 0).stop()
    except SimError as exc:
        problem = str(exc)
    if problem is not None:
        return f"{problem} (is NetfilterQueue installed? pip install NetfilterQueue)"
    return None
