"""The same CSV gives the same features at a node and in the simulator (node.training.features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from node.cli import main
from node.config import NodeConfig
from node.errors import ConfigError
from node.training.data import load_site_data
from node.training.features import Featurizer
from sim.data import load_dataset
from sim.partition import natural
from sim.prep import prepare, split_held_out


def _cohort(rows: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.normal(60, 12, rows)
    age[rng.random(rows) < 0.1] = np.nan
    ward = rng.choice(["icu", "onc", "surg"], rows).astype(object)
    ward[rng.random(rows) < 0.1] = None
    return pd.DataFrame(
        {
            "age": age,
            "marker": rng.exponential(3.0, rows),
            "ward": ward,
            "died": np.where(rng.random(rows) < 0.4, "yes", "no"),
            "site": np.repeat(["a", "b", "c"], -(-rows // 3))[:rows],
        }
    )


def test_a_node_encodes_its_csv_exactly_as_the_simulator_does(tmp_path: Path) -> None:
    """Each site's training rows as its own CSV; the sites' moments added by `murmur data`
    give features.json; a node reading its CSV with it gets the simulator's tensors."""
    cohort = _cohort()
    path = tmp_path / "cohort.csv"
    cohort.to_csv(path, index=False)
    table = load_dataset(f"csv:{path}", target="died", site_column="site")
    parts, names = natural(table.sites, min_rows=1)
    data = prepare(table, parts, names, seed=4)
    splits = split_held_out(parts, np.random.default_rng(4 + 17))  # prepare's own draw
    on_disk = pd.read_csv(path)
    moments = []
    for k, (train_rows, _) in enumerate(splits):
        site_csv = tmp_path / f"site-{k}.csv"
        on_disk.iloc[train_rows].drop(columns=["site"]).to_csv(site_csv, index=False)
        moments.append(tmp_path / f"moments-{k}.json")
        args = ["data", "moments", "--csv", str(site_csv), "--target", "died"]
        assert main([*args, "--out", str(moments[-1])]) == 0
    features = tmp_path / "features.json"
    assert main(["data", "features", *map(str, moments), "--out", str(features)]) == 0
    encoding = Featurizer.load(features)
    assert encoding.width == data.n_features == 2 + 4  # age, marker, ward ∪ {<missing>}
    for k in range(len(splits)):
        site = load_site_data(f"csv:{tmp_path / f'site-{k}.csv'}", "died", encoding=encoding)
        x, y = data.train[k]
        assert torch.equal(site.x, x)  # bit for bit
        assert torch.equal(site.y, y) and site.n_classes == data.n_classes == 2


def test_held_out_rows_are_encoded_with_the_training_rows_statistics(tmp_path: Path) -> None:
    train, held = tmp_path / "train.csv", tmp_path / "eval.csv"
    pd.DataFrame({"v": [0.0, 2.0, 4.0, 6.0], "y": [0, 1, 0, 1]}).to_csv(train, index=False)
    pd.DataFrame({"v": [10.0, 10.0], "y": [0, 1]}).to_csv(held, index=False)
    site = load_site_data(f"csv:{train}", "y")
    scored = load_site_data(f"csv:{held}", "y", encoding=site.encoding)
    std = float(np.std([0.0, 2.0, 4.0, 6.0]))
    torch.testing.assert_close(scored.x[:, 0], torch.full((2,), (10.0 - 3.0) / std))


def test_bad_feature_inputs_are_explained(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({"ward": ["a", "b", "a"], "v": [1, 2, 3], "y": [0, 1, 0]}).to_csv(
        path, index=False
    )
    with pytest.raises(ConfigError, match=r"columns \['ward'\] are not numeric.*\[data\] features"):
        load_site_data(f"csv:{path}", "y")
    other = tmp_path / "other.csv"
    pd.DataFrame({"v": [1, 2], "y": [0, 1]}).to_csv(other, index=False)
    moments = tmp_path / "m.json"
    assert (
        main(["data", "moments", "--csv", str(path), "--target", "y", "--out", str(moments)]) == 0
    )
    features = tmp_path / "f.json"
    assert main(["data", "features", str(moments), "--out", str(features)]) == 0
    with pytest.raises(ConfigError, match=r"columns \['ward'\] are in the consortium"):
        load_site_data(f"csv:{other}", "y", encoding=Featurizer.load(features))
    third = tmp_path / "third.csv"
    pd.DataFrame({"ward": ["a"], "v": [1], "y": [2]}).to_csv(third, index=False)
    with pytest.raises(ConfigError, match=r"labels \['2'\] are not among the classes"):
        load_site_data(f"csv:{third}", "y", encoding=Featurizer.load(features))
    features.write_text('{"format": "murmur-features/1", "numeric": ["v"]}')
    with pytest.raises(ConfigError, match="features file"):
        Featurizer.load(features)


def _join_consortium(tmp_path: Path, sites: int) -> tuple[list[Path], pd.DataFrame]:
    from node.provision import init

    cohort = _cohort(rows=20 * sites)
    names = [f"s{i}" for i in range(sites)]
    addresses = {n: f"/memory/{n}" for n in names}
    init(tmp_path, names, seed=2, addresses=addresses, data="csv:rows.csv", target="died")
    paths = []
    for i, name in enumerate(names):
        rows = cohort.iloc[i::sites].drop(columns=["site"])
        rows.to_csv(tmp_path / name / "rows.csv", index=False)
        path = tmp_path / name / "site.toml"
        path.write_text(path.read_text().replace("join_features = false", "join_features = true"))
        paths.append(path)
    return paths, cohort


async def _join_all(paths: list[Path], timeout_s: float = 30.0) -> list[NodeConfig | BaseException]:
    import asyncio

    from crypto.identity import load_key
    from node.config import load_config
    from node.join_features import joined
    from node.transport.memory import MemoryNetwork, MemoryTransport

    network = MemoryNetwork()
    configs = [load_config(p) for p in paths]
    jobs = []
    for config in configs:
        identity = load_key(config.site.key)
        transport = MemoryTransport(
            network, identity, f"/memory/{config.site.state_dir.parent.name}"
        )
        jobs.append(
            joined(
                config.edit(site={"listen": transport.listen_addr}), identity, transport, timeout_s
            )
        )
    return list(await asyncio.gather(*jobs, return_exceptions=True))


def test_sites_compute_the_consortium_statistics_at_join_by_a_masked_sum(tmp_path: Path) -> None:
    """[data] join_features: every site ends with the encoding of the pooled moments
    (as the simulator computes them), having seen only masked vectors of the others."""
    import asyncio

    from crypto import pairmask
    from node.join_features import ITEM_FILE, Item
    from node.training.data import csv_moments
    from node.training.features import total

    paths, _ = _join_consortium(tmp_path, 4)
    configs = asyncio.run(_join_all(paths))
    local = [csv_moments(p.parent / "rows.csv", "died") for p in paths]
    expected = Featurizer.from_moments(total(local))
    frame = pd.read_csv(paths[0].parent / "rows.csv").drop(columns=["died"])
    for path, config in zip(paths, configs, strict=True):
        assert not isinstance(config, BaseException), config
        assert config.data.features is not None
        got = Featurizer.load(config.data.features)
        assert got.categories == expected.categories and got.classes == ("no", "yes")
        np.testing.assert_allclose(got.encode(frame), expected.encode(frame), atol=1e-6)
        item = Item.unpack((path.parent / "state" / ITEM_FILE).read_bytes())
        own = csv_moments(path.parent / "rows.csv", "died")
        plain = pairmask.encode_fixed(np.concatenate([own.count, own.total, own.squares]).tolist())
        assert pairmask.from_bytes(item.masked) != plain  # what left the site was masked
    # and a restarted site reads what it computed, with no session
    again = asyncio.run(_join_all(paths[:1], timeout_s=0.1))[0]
    first = configs[0]
    assert not isinstance(again, BaseException) and not isinstance(first, BaseException)
    assert again.data.features == first.data.features


def test_a_join_without_every_member_names_the_missing_ones(tmp_path: Path) -> None:
    import asyncio

    paths, _ = _join_consortium(tmp_path, 3)
    results = asyncio.run(_join_all(paths[:2], timeout_s=1.0))
    assert all(isinstance(r, ConfigError) for r in results)
    assert "no masked moments from" in str(results[0]) and "every member must join" in str(
        results[0]
    )


def test_pairwise_masks_cancel_exactly_and_hide_each_vector() -> None:
    from crypto import pairmask
    from crypto.identity import SiteIdentity

    sites = [SiteIdentity.generate() for _ in range(4)]
    members = [s.peer_id for s in sites]
    values = [[float(i), -2.5 * i, 1e9 + i] for i in range(4)]
    masked = [
        pairmask.masked(s, members, b"session", v) for s, v in zip(sites, values, strict=True)
    ]
    assert pairmask.unmasked_total(masked) == [6.0, -15.0, 4e9 + 6]
    assert pairmask.unmasked_total(masked[:3]) != [3.0, -7.5, 3e9 + 3]  # no partial sums
    other = pairmask.masked(sites[0], members, b"another session", values[0])
    assert other != masked[0]


def test_nodes_train_on_the_joined_encoding(tmp_path: Path) -> None:
    """After the session the node starts on the same, already started, transport."""
    import asyncio
    import io

    from crypto.identity import load_key
    from node.config import load_config
    from node.join_features import joined
    from node.runtime import Node
    from node.transport.memory import MemoryNetwork, MemoryTransport

    paths, _ = _join_consortium(tmp_path, 3)

    async def run() -> list[dict[str, object]]:
        network = MemoryNetwork()
        nodes = []
        for path in paths:
            config = load_config(path).edit(train={"rounds": 4}, gossip={"deadline_s": 1.0})
            identity = load_key(config.site.key)
            transport = MemoryTransport(network, identity, f"/memory/{path.parent.name}")
            config = config.edit(site={"listen": transport.listen_addr})
            nodes.append((config, identity, transport))
        configs = await asyncio.gather(*(joined(c, i, t, 30.0) for c, i, t in nodes))
        running = [
            Node(c, t, io.StringIO(), io.StringIO())
            for c, (_, _, t) in zip(configs, nodes, strict=True)
        ]
        assert len({n.dim for n in running}) == 1
        return list(await asyncio.gather(*(n.run() for n in running)))

    results = asyncio.run(run())
    assert [r["round"] for r in results] == [4, 4, 4]


@pytest.mark.slow
def test_the_join_session_runs_over_real_libp2p(tmp_path: Path) -> None:
    import asyncio

    from crypto.identity import load_key
    from node.config import load_config
    from node.join_features import joined
    from node.transport.p2p import P2PTransport

    paths, _ = _join_consortium(tmp_path, 3)

    async def run() -> list[NodeConfig]:
        configs = [load_config(p) for p in paths]
        transports = []
        for config in configs:
            identity = load_key(config.site.key)
            transports.append(P2PTransport(identity, "/ip4/127.0.0.1/tcp/0", timeout_s=5.0))
        for t in transports:
            await t.start()
        book = {t.peer_id: t.listen_addr for t in transports}
        configs = [c.edit(consortium={"peers": book}) for c in configs]
        try:
            return list(
                await asyncio.gather(
                    *(
                        joined(c, load_key(c.site.key), t, 60.0)
                        for c, t in zip(configs, transports, strict=True)
                    )
                )
            )
        finally:
            for t in transports:
                await t.aclose()

    configs = asyncio.run(run())
    encodings = [Featurizer.load(c.data.features).to_json() for c in configs if c.data.features]
    assert len(encodings) == 3
    assert encodings[0] == encodings[1] == encodings[2]


def test_a_member_whose_vector_is_not_masked_for_the_session_poisons_nothing(
    tmp_path: Path,
) -> None:
    """Its masks do not cancel: every site refuses the sum instead of training on noise.
    (A member can always lie about its own moments, masked correctly; that is poisoning
    by a member, which no aggregation of this kind can tell from an outlier site.)"""
    import asyncio
    from dataclasses import replace

    from crypto import pairmask
    from crypto.identity import load_key
    from crypto.keyfile import write_secret
    from node.config import load_config
    from node.join_features import ITEM_FILE, own_item, session_label
    from node.training.data import csv_moments

    paths, _ = _join_consortium(tmp_path, 3)
    config = load_config(paths[0])
    identity = load_key(config.site.key)
    honest = own_item(identity, config, csv_moments(paths[0].parent / "rows.csv", "died"))
    own = csv_moments(paths[0].parent / "rows.csv", "died")
    values = np.concatenate([own.count, own.total, own.squares]).tolist()
    elsewhere = pairmask.masked(identity, list(config.consortium.members), b"elsewhere", values)
    forged = replace(honest, masked=pairmask.to_bytes(elsewhere))
    forged = replace(forged, sig=identity.sign(forged.signed(session_label(config))))
    write_secret(config.site.state_dir / ITEM_FILE, forged.pack(), overwrite=True)
    results = asyncio.run(_join_all(paths))
    assert all(isinstance(r, ConfigError) and "not a sum of moments" in str(r) for r in results)


@pytest.mark.slow
def test_murmur_node_processes_join_then_train(tmp_path: Path) -> None:
    """`murmur node` with [data] join_features, three real processes over libp2p: the
    session runs on each node's own transport, then the rounds."""
    import json
    import os
    import subprocess
    import sys

    from sim.consortium import free_ports

    root = Path(__file__).resolve().parent.parent
    ports = free_ports(3)
    addresses = ",".join(f"{n}=/ip4/127.0.0.1/tcp/{p}" for n, p in zip("abc", ports, strict=True))
    init = ["consortium", "init", "--sites", "a,b,c", "--out", str(tmp_path), "--rounds", "6"]
    assert main([*init, "--data", "csv:rows.csv", "--target", "died", "--address", addresses]) == 0
    cohort = _cohort(rows=90)
    for i, name in enumerate("abc"):
        cohort.iloc[i::3].drop(columns=["site"]).to_csv(tmp_path / name / "rows.csv", index=False)
        path = tmp_path / name / "site.toml"
        path.write_text(path.read_text().replace("join_features = false", "join_features = true"))
    env = {**os.environ, "PYTHONPATH": str(root)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "node.cli", "node", "--config", str(tmp_path / n / "site.toml")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in "abc"
    ]
    outputs = [p.communicate(timeout=240) for p in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err.decode()[-2000:]
    for out, _ in outputs:
        finish = [e for e in map(json.loads, out.decode().splitlines()) if e["event"] == "finish"]
        assert finish and finish[0]["round"] == 6
    files = [(tmp_path / n / "state" / "features.json").read_text() for n in "abc"]
    assert files[0] == files[1] == files[2] and '"<missing>"' in files[0]


def test_a_moments_item_from_a_peer_is_refused_cleanly_whatever_it_holds(tmp_path: Path) -> None:
    """Every malformed item is one MalformedFrameError: no crash, no size it dictates."""
    import random

    import msgpack

    from node.errors import MalformedFrameError
    from node.join_features import Item

    good = Item("12D3KooW", ("age",), b"\0" * 48, {"ward": ("a",)}, ("no", "yes"), b"s" * 64)
    packed = good.pack()
    assert Item.unpack(packed) == good
    hostile = [
        msgpack.packb({**msgpack.unpackb(packed), "masked": 2**62}),  # bytes(n) would allocate n
        msgpack.packb({**msgpack.unpackb(packed), "categories": {"ward": 7}}),
        msgpack.packb([1, 2, 3]),
        b"\xc1",
    ]
    for data in hostile:
        with pytest.raises(MalformedFrameError):
            Item.unpack(data)
    rng = random.Random(0)
    for _ in range(2000):
        data = bytearray(packed)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        hostile.append(bytes(data))
    for data in hostile:
        try:
            Item.unpack(data)
        except MalformedFrameError:
            continue
