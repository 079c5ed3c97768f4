"""``murmur consortium``: provisioning as the README describes it, and its bad inputs."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crypto.identity import SiteIdentity, load_key
from node import provision
from node.cli import main
from node.config import load_config
from node.errors import ConfigError
from sim.consortium import free_ports

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- run-a-site[^>]*-->\n```\n(.*?)```\n<!-- /run-a-site -->", text, re.S)
    assert block is not None, "README lost its run-a-site block"
    return [line.strip() for line in block.group(1).replace("\\\n", " ").splitlines()]


@pytest.mark.slow
def test_the_readme_runs_a_three_site_consortium(tmp_path: Path) -> None:
    """Every line of the README's block, as written; only the ports are swapped for free
    ones so that a busy CI machine cannot collide."""
    ports = dict(zip(("4101", "4102", "4103"), map(str, free_ports(3)), strict=True))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    background, logs = [], []
    for line in _readme_commands():
        for fixed, free in ports.items():
            line = line.replace(f"/tcp/{fixed}", f"/tcp/{free}")
        detach = line.endswith("&")
        argv = shlex.split(line.removesuffix("&"))
        assert argv[0] == "murmur"
        command = [sys.executable, "-m", "node.cli", *argv[1:]]
        if detach:
            name = argv[-1].split("/")[1]
            out = (tmp_path / f"{name}.out").open("w")
            logs.append(out)
            background.append(
                subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=out)
            )
            continue
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode()
        if argv[1] == "node" and "--check-config" not in argv:
            (tmp_path / "c.out").write_bytes(done.stdout)
    for process in background:
        assert process.wait(timeout=120) == 0
    for log in logs:
        log.close()
    for site in ("a", "b", "c"):
        events = [
            json.loads(line)
            for line in (tmp_path / f"{site}.out").read_text().splitlines()
            if line.startswith("{")
        ]
        finish = [e for e in events if e["event"] == "finish"]
        assert finish and finish[0]["round"] == 20
        assert finish[0]["accuracy"] > 0.9  # Wisconsin: the majority class is 63%


def test_init_writes_keys_configs_and_next_steps(tmp_path: Path) -> None:
    own = SiteIdentity.generate()
    out = tmp_path / "consortium"
    manifest = provision.init(
        out, ["a", "b", "c"], seed=5, peer_ids={"c": own.peer_id}, data="csv:rows.csv"
    )
    assert not (out / "c" / "site.key").exists()  # c keeps its own key
    for site in manifest.sites[:2]:
        key = out / site.name / "site.key"
        assert key.stat().st_mode & 0o777 == 0o600
        assert load_key(key).peer_id == site.peer_id
    config = load_config(out / "a" / "site.toml")
    assert config.consortium.members == tuple(s.peer_id for s in manifest.sites)
    assert config.consortium.seed == 5 and len(config.consortium.peers) == 2
    assert config.data.source == f"csv:{(out / 'a' / 'rows.csv').absolute()}"
    assert own.peer_id in (out / "README.md").read_text()
    # Paths are relative to the folder: the site can put it anywhere.
    moved = shutil.move(out / "a", tmp_path / "elsewhere")
    again = load_config(Path(moved) / "site.toml")
    assert again.site.key == (tmp_path / "elsewhere" / "site.key").absolute()
    assert again.consortium == config.consortium


def test_add_and_remove_reach_every_site_and_update_keeps_local_settings(tmp_path: Path) -> None:
    out = tmp_path / "consortium"
    provision.init(out, ["a", "b", "c"], data="builtin:breast-cancer")
    # Site a moved its folder to its own machine and pointed [data] at its CSV.
    site_a = Path(shutil.copytree(out / "a", tmp_path / "site-a"))
    text = (site_a / "site.toml").read_text()
    (site_a / "site.toml").write_text(
        text.replace('source = "builtin:breast-cancer"', 'source = "csv:mine.csv"\ntarget = "y"')
    )
    grown, written = provision.add_site(out, "d", data="builtin:breast-cancer")
    assert len(written) == 4 and len(grown.sites) == 4
    for name in "abcd":
        assert len(load_config(out / name / "site.toml").consortium.members) == 4
    shrunk, _ = provision.remove_site(out, "b")
    assert [s.name for s in shrunk.sites] == ["a", "c", "d"]
    assert main(["consortium", "update", "--manifest", str(out / provision.MANIFEST),
                 "--config", str(site_a / "site.toml")]) == 0  # fmt: skip
    updated = load_config(site_a / "site.toml")
    assert updated.consortium == shrunk.consortium("a")
    assert (updated.data.source, updated.data.target) == (f"csv:{site_a / 'mine.csv'}", "y")
    with pytest.raises(ConfigError, match="does not list this site"):
        provision.update(out / provision.MANIFEST, out / "b" / "site.toml")


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--sites", "a"], "at least two different site names"),
        (["--sites", "a,a"], "at least two different site names"),
        (["--sites", "a,B"], "site name 'B'"),
        (["--sites", "a,b", "--peer-id", "b=12D3KooWnotakey"], "--peer-id b"),
        (["--sites", "a,b", "--address", "z=/ip4/1.2.3.4/tcp/1"], "not in --sites"),
        (["--sites", "a,b", "--address", "a"], "SITE=VALUE"),
        (["--sites", "a,b", "--topology", "regular:7"], "topology"),
        (["--sites", "a,b", "--data", "csv:x.csv", "--target", ""], "target"),
    ],
)
def test_bad_provisioning_input_is_one_line_and_writes_nothing(
    tmp_path: Path, argv: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c"
    assert main(["consortium", "init", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1
    assert not (out / provision.MANIFEST).exists() and not list(out.rglob("site.key"))


def test_existing_consortia_and_last_members_are_protected(tmp_path: Path) -> None:
    provision.init(tmp_path, ["a", "b"])
    with pytest.raises(ConfigError, match="already holds a consortium"):
        provision.init(tmp_path, ["a", "b"])
    with pytest.raises(ConfigError, match="already has a site called 'a'"):
        provision.add_site(tmp_path, "a")
    with pytest.raises(ConfigError, match="at least two sites"):
        provision.remove_site(tmp_path, "a")
    with pytest.raises(ConfigError, match="no site called 'x'"):
        provision.remove_site(tmp_path, "x")
