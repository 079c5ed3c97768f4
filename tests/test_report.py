"""``murmur report``: the HTML page of real runs, rendered in headless Chromium.

The runs are real (``murmur sim`` in-process, and with real node processes, one of them
SIGKILLed and restarted); what the page must show is read back from the run's own files
(summary.json, each node's node.jsonl and audit.log), never written down here. Chromium
renders the page: its DOM gives the tables as a browser sees them, and a probe page
counts the embedded images the browser could decode.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from node.cli import main
from sim.errors import SimError
from sim.run_report import NOT_RECORDED, write_report

# Counts, once the page has loaded, the images the browser decoded and all images.
PROBE = (
    "<script>addEventListener('load', () => { const all = [...document.images]; "
    "document.title = all.filter(i => i.complete && i.naturalWidth > 0).length + '/' + "
    "all.length; });</script>"
)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: run `make test`, which installs it")
    return path


def _browse(page: Path, profile: Path, *flags: str) -> str:
    """Chromium's output for ``page`` (headless, a throwaway profile)."""
    proc = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            *flags,
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _decoded_images(report: Path, profile: Path) -> tuple[int, int]:
    """(images the browser decoded, images) of ``report``, from a copy with the probe."""
    probe = report.with_name("probe.html")
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    dom = _browse(probe, profile, "--dump-dom")
    found = re.search(r"<title>(\d+)/(\d+)</title>", dom)
    assert found, dom[:500]
    return int(found.group(1)), int(found.group(2))


class Tables(HTMLParser):
    """Every ``<table id=…>``: its header texts and rows, each row's attributes and cells
    (text, ``data-value``)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, Any]] = {}
        self.current: dict[str, Any] | None = None
        self.cell: list[str] | None = None
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        got = dict(attrs)
        if tag == "table" and got.get("id"):
            self.current = self.tables[str(got["id"])] = {"headers": [], "rows": []}
        elif self.current is not None and tag == "tr":
            self.current["rows"].append({"attrs": got, "cells": []})
        elif self.current is not None and tag in ("td", "th"):
            self.cell, self.text = [tag, got.get("data-value") or ""], ""

    def handle_data(self, data: str) -> None:
        self.text += data

    def handle_endtag(self, tag: str) -> None:
        if self.current is None:
            return
        if tag in ("td", "th") and self.cell is not None:
            if self.cell[0] == "th":
                self.current["headers"].append(self.text.strip())
            else:
                self.current["rows"][-1]["cells"].append((self.text.strip(), self.cell[1]))
            self.cell = None
        elif tag == "table":
            self.current["rows"] = [r for r in self.current["rows"] if r["cells"]]
            self.current = None


def _tables(html: str) -> dict[str, dict[str, Any]]:
    parser = Tables()
    parser.feed(html)
    return parser.tables


def _column(table: dict[str, Any], header: str) -> list[tuple[str, str]]:
    k = table["headers"].index(header)
    return [row["cells"][k] for row in table["rows"]]


def _sim(out: Path, *flags: str) -> Path:
    code = main(["sim", "--nodes", "4", "--dataset", "breast-cancer", "--out", str(out), *flags])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def inprocess_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _sim(
        tmp_path_factory.mktemp("inprocess"),
        *("--rounds", "8", "--methods", "central,local,fedavg,murmur", "--kill", "2@2:5"),
    )


@pytest.fixture(scope="module")
def process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four node processes on 127.0.0.1; node 1 SIGKILLed at round 3, restarted at 5."""
    return _sim(
        tmp_path_factory.mktemp("process"),
        *("--rounds", "8", "--backend", "process", "--methods", "local,murmur"),
        *("--kill", "1@3:5"),
    )


@pytest.mark.slow
def test_report_of_an_inprocess_run_renders_its_results(
    inprocess_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(inprocess_run)]) == 0
    report = inprocess_run / "report.html"
    assert capsys.readouterr().out.strip().endswith(str(report))
    html = report.read_text()
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", html)  # nothing to fetch
    summary = json.loads((inprocess_run / "summary.json").read_text())
    dom = _browse(report, tmp_path / "profile", "--dump-dom")
    results = _tables(dom)["results"]
    assert [r["attrs"]["data-method"] for r in results["rows"]] == list(summary["methods"])
    assert [c[0] for c in _column(results, "method")] == list(summary["methods"])
    methods = summary["methods"].values()
    checks: list[tuple[str, str, Callable[[Any], str]]] = [
        ("acc mean %", "accuracy_mean", lambda v: f"{100 * v:.1f}"),
        ("acc worst %", "accuracy_min", lambda v: f"{100 * v:.1f}"),
        ("AUC mean", "auc_mean", lambda v: f"{v:.3f}"),
        ("consensus end", "consensus_end", lambda v: f"{v:.3g}"),
        ("rounds→99%", "rounds_to_target", str),
    ]
    for header, key, show in checks:
        for (text, raw), entry in zip(_column(results, header), methods, strict=True):
            value = entry.get(key)
            assert json.loads(raw) == value, (header, entry)
            assert text == ("—" if value is None else show(value)), (header, text, value)
    sent = [json.loads(raw) for _, raw in _column(results, "sent/node")]
    assert sent == [m["bytes_per_node"] for m in methods]
    assert sent[list(summary["methods"]).index("murmur")] > 0
    config = {r["cells"][0][0]: r["cells"][1][0] for r in _tables(dom)["config"]["rows"]}
    assert json.loads(config["rounds"]) == 8 and json.loads(config["kill"]) == ["2@2:5"]
    text = re.sub(r"<[^>]+>", " ", dom)
    for what in ("Per-site timelines", "Supervisor events", "Audit logs"):
        assert re.search(re.escape(what) + r" \([^)]*\): " + NOT_RECORDED, text), what
    pngs = len(list(inprocess_run.glob("*.png")))
    assert pngs == 3
    assert _decoded_images(report, tmp_path / "profile") == (pngs, pngs)


@pytest.mark.slow
def test_the_image_probe_sees_a_broken_image(inprocess_run: Path, tmp_path: Path) -> None:
    """The decode check can fail: an embedded image that is not a PNG is not counted."""
    write_report(inprocess_run)
    report = tmp_path / "report.html"
    html = (inprocess_run / "report.html").read_text()
    report.write_text(re.sub(r"base64,[A-Za-z0-9+/]{40}", "base64," + "A" * 40, html, count=1))
    assert _decoded_images(report, tmp_path / "profile") == (2, 3)


def _node_events(node_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (node_dir / "node.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_report_of_a_process_run_shows_sites_faults_and_audit(
    process_run: Path, tmp_path: Path
) -> None:
    report = write_report(process_run)
    dom = _browse(report, tmp_path / "profile", "--dump-dom")
    tables = _tables(dom)
    nodes = process_run / "murmur" / "nodes"
    sites = tables["sites-murmur"]
    assert [c[0] for c in _column(sites, "site")] == [f"node-{i}" for i in range(4)]
    for i, (done, sent, restarts) in enumerate(
        zip(
            _column(sites, "rounds done"),
            _column(sites, "bytes sent"),
            _column(sites, "restarts"),
            strict=True,
        )
    ):
        events = _node_events(nodes / f"node-{i}")
        assert int(done[1]) == max(e["round"] for e in events if e["event"] == "round")
        finish = [e for e in events if e["event"] == "finish"][-1]
        assert int(sent[1]) == finish["bytes_sent"]
        assert int(restarts[1]) == (1 if i == 1 else 0)
        assert sum(e["event"] == "start" for e in events) == (2 if i == 1 else 1)
    supervisor = tables["supervisor"]
    assert [(r["cells"][2][0], r["cells"][3][0]) for r in supervisor["rows"]] == [
        ("killed", "node-1"),
        ("restarted", "node-1"),
    ]
    audit = tables["audit"]
    assert [c[0] for c in _column(audit, "site")] == [f"node-{i}" for i in range(4)]
    for i, row in enumerate(audit["rows"]):
        lines = (nodes / f"node-{i}" / "state" / "audit.log").read_text().splitlines()
        ways = [
            frame[0]
            for line in lines
            if (entry := json.loads(line))["kind"] == "frames"
            for frame in entry["data"]["frames"]
        ]
        cells = dict(zip(audit["headers"], row["cells"], strict=True))
        assert cells["verified"][0] == "OK"
        assert int(cells["entries"][1]) == len(lines)
        assert int(cells["frames sent"][1]) == ways.count("sent") > 0
        assert int(cells["frames received"][1]) == ways.count("received") > 0
    assert _decoded_images(report, tmp_path / "profile") == (4, 4)  # 3 plots, 1 timeline
    shot = tmp_path / "shot.png"
    _browse(report, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2000")
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (2000, 1200)
    assert (pixels[..., :3] < 0.9).any(axis=-1).mean() > 0.02  # not a blank page


@pytest.mark.slow
def test_a_tampered_audit_log_names_its_first_bad_entry(process_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(process_run / "murmur", run, symlinks=True)
    log = run / "nodes" / "node-2" / "state" / "audit.log"
    lines = log.read_text().splitlines()
    bad = len(lines) // 2
    entry = json.loads(lines[bad])
    entry["data"]["tampered"] = 1
    lines[bad] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    log.write_text("\n".join(lines) + "\n")
    tables = _tables(write_report(run).read_text())
    verified = {
        c[0]: v[0]
        for c, v in zip(*(_column(tables["audit"], h) for h in ("site", "verified")), strict=True)
    }
    assert verified.pop("node-2").startswith(f"entry {bad}:")
    assert set(verified.values()) == {"OK"}
    html = (run / "report.html").read_text()
    assert "Results (summary.json): " + NOT_RECORDED in html  # a process folder alone


def test_a_consortium_folder_and_one_site_folder_get_their_audit_logs_checked(
    process_run: Path, tmp_path: Path
) -> None:
    """What a consortium run leaves where its sites ran: ``murmur consortium init``'s
    folder with a folder a site (here the process run's sites, which hold real logs),
    and what one site's data-protection officer has: that site's folder alone."""
    folder = tmp_path / "consortium"
    assert main(["consortium", "init", "--sites", "a,b", "--out", str(folder)]) == 0
    for name in ("a", "b"):
        shutil.rmtree(folder / name)
    nodes = process_run / "murmur" / "nodes"
    for site in sorted(p for p in nodes.iterdir() if p.is_dir()):
        shutil.copytree(site, folder / site.name, symlinks=True)
    tables = _tables(write_report(folder).read_text())
    audit = tables["audit"]
    assert [c[0] for c in _column(audit, "site")] == [f"node-{i}" for i in range(4)]
    assert {v[0] for v in _column(audit, "verified")} == {"OK"}
    entries = [int(c[1]) for c in _column(audit, "entries")]
    assert entries == [
        len((nodes / f"node-{i}" / "state" / "audit.log").read_text().splitlines())
        for i in range(4)
    ]
    one = _tables(write_report(folder / "node-2").read_text())["audit"]
    assert [c[0] for c in _column(one, "site")] == ["node-2"]
    assert [int(c[1]) for c in _column(one, "entries")] == entries[2:3]


def test_a_folder_that_is_not_a_run_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("not a run")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path) in err
    assert "no summary.json, no nodes/ folder" in err
    assert not (tmp_path / "report.html").exists()
    with pytest.raises(SimError, match="no such run directory"):
        write_report(tmp_path / "absent")
    (tmp_path / "summary.json").write_text("{not json")
    assert main(["report", str(tmp_path)]) == 2
    assert "summary.json" in capsys.readouterr().err


def test_text_from_the_run_is_escaped(tmp_path: Path) -> None:
    name = "<img src=x onerror=alert(1)>"
    note = "</table><script>x</script>"
    summary = {"config": {"note": note}, "methods": {name: {"rounds": 1}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    html = write_report(tmp_path).read_text()
    assert name not in html and "<script>x" not in html
    tables = _tables(html)
    assert [r["attrs"]["data-method"] for r in tables["results"]["rows"]] == [name]
    assert tables["config"]["rows"][0]["cells"][1][0] == json.dumps(note)
    assert html.count(NOT_RECORDED) == 5  # plots, timelines, faults asked, supervisor, audit


def test_a_segmentation_run_is_reported_by_dice_not_accuracy() -> None:
    from sim.run_report import results_section

    entry = {
        "accuracy_mean": 0.81,
        "accuracy_min": 0.7,
        "dice_mean": 0.81,
        "dice_min": 0.7,
        "dice_smallest_site": 0.72,
        "dice_wt": 0.9,
        "dice_tc": 0.8,
        "dice_et": 0.73,
        "hd95_wt": 9.84,
        "hd95_tc": 3.8,
        "hd95_et": 16.7,
        "bytes_per_node": 1e6,
        "target_accuracy": 0.8,
    }
    page = results_section({"murmur": entry})
    assert "Dice mean" in page and "HD95 WT mm" in page and "acc mean %" not in page
    assert '<td data-value="0.81">0.810</td>' in page and ">9.8<" in page
    assert "99% of central's mean Dice = 0.800" in page
    assert "accuracy_mean" not in page  # not repeated under "More figures"
