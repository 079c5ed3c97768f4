"""``murmur report RUN_DIR``: one self-contained HTML page of a simulator or consortium run.

A run directory (``murmur sim --out DIR``) holds ``summary.json`` and PNG plots, and with
``--backend process`` one folder per networked method (``DIR/murmur/``) holding the merged
``timeline.jsonl`` and ``nodes/node-<i>/`` with each site's logs and audit log; a folder
written by :func:`sim.process.run_processes` alone has only the latter. A consortium
folder (``murmur consortium init --out DIR``, the sites run in it) or a single site's
folder gives the audit section (:mod:`sim.run_audit`). The page gathers
all of it for someone who was not at the terminal (a site's data-protection officer, a
reviewer): a single file that can be mailed or archived, so images are embedded as data
URIs, the CSS is inline, and there is no script and no link to fetch. Everything read
from the run is escaped: method names, peer IDs and log reasons come from files that a
site, or whoever holds its disk, controls.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
from html import escape
from pathlib import Path
from typing import Any

from murmur.files import atomic_write
from node.cli import Command
from sim.errors import SimError
from sim.report import DICE_COLUMNS, fmt, is_segmentation
from sim.run_audit import audit_logs, site_folders
from sim.run_timeline import plot_timeline, read_timeline, site_stats, supervisor_events

NOT_RECORDED = "not recorded for this run"
PLOTS = ("accuracy_vs_round.png", "accuracy_vs_bytes.png", "consensus_vs_round.png")
# (header, summary key, format for sim.report.fmt): the terminal table's columns, plus
# the consensus distance at the end; every other scalar goes to the "more figures" table.
COLUMNS = [
    ("acc mean %", "accuracy_mean", "pct"),
    ("acc worst %", "accuracy_min", "pct"),
    ("AUC mean", "auc_mean", "auc"),
    ("consensus end", "consensus_end", "sci"),
    ("sent/node", "bytes_per_node", "bytes"),
    ("rounds→99%", "rounds_to_target", "int"),
    ("bytes→99%", "bytes_to_target", "bytes"),
    ("wall s", "wall_s", "s"),
]
# A segmentation run's (sim.segmentation): Dice in place of accuracy, HD95 per region.
SEGMENTATION_COLUMNS = [
    *((long, key, "auc") for _, long, key in DICE_COLUMNS),
    *((f"HD95 {r.upper()} mm", f"hd95_{r}", "s") for r in ("wt", "tc", "et")),
    *COLUMNS[3:],
]
FAULT_KEYS = ("drop", "delay", "deadline", "slow", "kill", "partition", "wan")
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td[data-value] { text-align: right; }
thead th { background: #eef; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.bad { color: #b00; font-weight: bold; } .ok { color: #070; }
p.missing { color: #777; font-style: italic; }
"""


def cell(value: Any, kind: str) -> str:
    """A table cell showing ``value`` as the terminal table does; ``data-value`` keeps the
    exact figure (JSON) for anyone reading the page with a program."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        text = "—"
    elif kind in ("auc", "sci", "plain") and isinstance(value, float):
        text = format(value, {"auc": ".3f", "sci": ".3g", "plain": ".6g"}[kind])
    else:
        text = str(value) if kind == "plain" else fmt(value, kind)
    raw = escape(json.dumps(value), quote=True)
    return f'<td data-value="{raw}">{escape(text)}</td>'


def table(headers: list[str], rows: list[str], css_id: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    ident = f' id="{escape(css_id)}"' if css_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def missing(what: str) -> str:
    return f'<p class="missing">{escape(what)}: {NOT_RECORDED}.</p>'


def image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def parts(run_dir: Path) -> list[tuple[str, Path]]:
    """The folders of the run that hold sites: itself, then one per networked method of a
    ``murmur sim`` run (a consortium's or a site's folder is one part, its sites inside)."""
    if not _is_process_run(run_dir) and site_folders(run_dir):
        return [("", run_dir)]
    found = [("", run_dir)] if _is_process_run(run_dir) else []
    subdirs = sorted(p for p in run_dir.iterdir() if p.is_dir() and _is_process_run(p))
    return found + [(p.name, p) for p in subdirs]


def _is_process_run(folder: Path) -> bool:
    return (folder / "timeline.jsonl").is_file() or (folder / "nodes").is_dir()


def load_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        summary: Any = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SimError(f"{path} is not a summary.json murmur sim wrote: {exc}") from None
    methods = summary.get("methods", {}) if isinstance(summary, dict) else None
    if (
        not isinstance(methods, dict)
        or not all(isinstance(m, dict) for m in methods.values())
        or not isinstance(summary.get("config", {}), dict)
    ):
        raise SimError(f"{path} is not a summary.json murmur sim wrote (config, methods)")
    return dict(summary)


def key_values(pairs: dict[str, Any], css_id: str) -> str:
    rows = [
        f"<tr><td>{escape(str(k))}</td><td>{escape(json.dumps(v, ensure_ascii=False))}</td></tr>"
        for k, v in pairs.items()
    ]
    return f'<table class="kv" id="{escape(css_id)}">{"".join(rows)}</table>'


def config_section(config: dict[str, Any] | None) -> str:
    if not config:
        return missing("The run's configuration (summary.json)")
    return key_values(config, "config")


def results_section(methods: dict[str, dict[str, Any]] | None) -> str:
    if not methods:
        return missing("Results (summary.json)")
    segmentation = is_segmentation(methods)
    columns = SEGMENTATION_COLUMNS if segmentation else COLUMNS
    shown = [c for c in columns if any(c[1] in m for m in methods.values())]
    rows = [
        f'<tr data-method="{escape(name)}"><td>{escape(name)}</td>'
        + "".join(cell(entry.get(key), kind) for _, key, kind in shown)
        + "</tr>"
        for name, entry in methods.items()
    ]
    out = table(["method", *[c[0] for c in shown]], rows, "results")
    known = {c[1] for c in columns} | {"curve", "target_accuracy"}
    if segmentation:  # the curves' score is the mean Dice, shown above
        known |= {"accuracy_mean", "accuracy_min"}
    extra = sorted(
        {k for m in methods.values() for k, v in m.items() if k not in known and _scalar(v)}
    )
    target = next(iter(methods.values())).get("target_accuracy")
    if isinstance(target, float) and segmentation:
        out += f"<p>target = 99% of central's mean Dice = {target:.3f}</p>"
    elif isinstance(target, float):
        out += f"<p>target = 99% of central's accuracy = {100 * target:.1f}%</p>"
    if extra:
        more = [
            f"<tr><td>{escape(k)}</td>"
            + "".join(cell(m.get(k), "plain") for m in methods.values())
            + "</tr>"
            for k in extra
        ]
        out += "<h3>More figures</h3>" + table(["figure", *methods], more, "more")
    return out


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, int | float | str | bool)


def plots_section(run_dir: Path) -> str:
    found = [run_dir / p for p in PLOTS if (run_dir / p).is_file()]
    found += sorted(p for p in run_dir.glob("*.png") if p.name not in PLOTS)
    if not found:
        return missing("Plots")
    return "".join(image(p.read_bytes(), p.name) for p in found)


def _title(label: str) -> str:
    return f"<h3>{escape(label)}</h3>" if label else ""


def timeline_section(found: list[tuple[str, Path]]) -> str:
    out = ""
    for label, folder in found:
        path = folder / "timeline.jsonl"
        if not path.is_file():
            out += _title(label) + missing(f"The timeline ({path.name})")
            continue
        events = read_timeline(path)
        rows = [
            f"<tr><td>node-{s.node}</td>{cell(s.rounds_done, 'int')}"
            f"{cell(s.last_latency_s, 'plain')}{cell(s.bytes_sent, 'bytes')}"
            f"{cell(s.rejected, 'int')}{cell(s.restarts, 'int')}"
            f"<td>{'yes' if s.finished else 'no'}</td></tr>"
            for s in site_stats(events)
        ]
        headers = ["site", "rounds done", "last round latency s", "bytes sent", "rejected frames"]
        out += (
            _title(label)
            + image(plot_timeline(events, label or folder.name), f"timeline {label}")
            + table([*headers, "restarts", "finished"], rows, f"sites-{label}")
        )
    return out or missing("Per-site timelines (timeline.jsonl)")


def faults_section(config: dict[str, Any] | None, found: list[tuple[str, Path]]) -> str:
    asked = {k: config[k] for k in FAULT_KEYS if config and k in config}
    out = key_values(asked, "faults-asked") if asked else missing("The faults asked for")
    rows = []
    for label, folder in found:
        path = folder / "timeline.jsonl"
        events = read_timeline(path) if path.is_file() else []
        t0 = min((float(e.get("t", 0.0)) for e in events), default=0.0)
        rows += [
            f"<tr><td>{escape(label or folder.name)}</td>"
            f"{cell(float(e.get('t', 0.0)) - t0, 's')}<td>{escape(str(e.get('event')))}</td>"
            f"<td>node-{escape(str(e['node']))}</td>{cell(e.get('round'), 'int')}</tr>"
            for e in supervisor_events(events)
        ]
    if rows:
        return (
            out
            + table(["run", "at s", "event", "site", "round"], rows, "supervisor")
            + "<p>round: where the site was when killed; the furthest any site had reached "
            "when it was restarted.</p>"
        )
    return out + missing("Supervisor events (kills and restarts of node processes)")


def audit_section(found: list[tuple[str, Path]]) -> str:
    rows = []
    for label, folder in found:
        for site in audit_logs(folder):
            verdict = site.verdict
            status = (
                '<td class="ok">OK</td>'
                if verdict.ok
                else f'<td class="bad">entry {verdict.first_bad}: {escape(verdict.reason)}</td>'
            )
            signer = str(verdict.peer_id) + (f" ({site.note})" if site.note else "")
            rows.append(
                f'<tr data-site="{escape(site.site)}"><td>{escape(label)}</td>'
                f"<td>{escape(site.site)}</td>{status}{cell(verdict.entries, 'int')}"
                f"{cell(site.sent, 'int')}{cell(site.received, 'int')}"
                f"<td>{escape(signer)}</td></tr>"
            )
    if not rows:
        return missing("Audit logs (each site's state/audit.log)")
    headers = ["run", "site", "verified", "entries", "frames sent", "frames received", "signed by"]
    return table(headers, rows, "audit")


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` and return its path; a folder that is not a run is a
    SimError naming what is missing."""
    if not run_dir.is_dir():
        raise SimError(f"{run_dir}: no such run directory")
    summary = load_summary(run_dir)
    found = parts(run_dir)
    if summary is None and not found:
        raise SimError(
            f"{run_dir} is not a murmur run: it has no summary.json, no nodes/ folder "
            "and no site.toml in it or a folder below (murmur sim --out DIR writes a run; "
            "murmur consortium init --out DIR a consortium)"
        )
    config = (summary or {}).get("config")
    methods = (summary or {}).get("methods")
    sections = [
        ("config", "Configuration", config_section(config)),
        ("results", "Results", results_section(methods)),
        ("plots", "Plots", plots_section(run_dir)),
        ("timelines", "Per-site timelines", timeline_section(found)),
        ("faults", "Faults injected", faults_section(config, found)),
        ("audit", "Audit logs", audit_section(found)),
    ]
    body = "".join(f'<section id="s-{i}"><h2>{escape(t)}</h2>{h}</section>' for i, t, h in sections)
    title = f"Murmur run report — {run_dir.resolve().name}"
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title><style>{CSS}</style></head><body><h1>{escape(title)}</h1>"
        f"<p>{escape(str(run_dir.resolve()))}</p>{body}</body></html>\n"
    )
    path = run_dir / "report.html"
    atomic_write(path, page.encode(), durable=False)
    return path


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run's folder (murmur sim --out DIR)")


def _run(args: argparse.Namespace) -> int:
    print(write_report(args.run_dir))
    return 0


COMMAND = Command(
    "report", "write RUN_DIR/report.html: one self-contained page of a run", _add_arguments, _run
)
