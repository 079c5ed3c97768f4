"""The audit log: every node keeps one, it verifies, and every kind of tampering shows."""

from __future__ import annotations

import json
import random
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.identity import SiteIdentity
from node.audit.check import cross_check, frames_of, read_entries, verify
from node.audit.log import (
    HEAD_FILE,
    LOG_FILE,
    AuditLog,
    canonical,
    digest,
    frame_digest,
    frame_item,
    frames_data,
)
from node.cli import main
from node.errors import ConfigError
from node.training.trainer import TrainConfig
from sim.audit_tamper import random_tampering
from sim.consortium import ConsortiumSpec, write_consortium
from sim.own_loops import memory_nodes
from sim.prep import FederatedData
from tests.node_kit import events, run_nodes, subset

TRAIN = TrainConfig(optimizer="sgd", lr=0.3, batch_size=16, lr_schedule="constant")


def _synthetic(tmp_path: Path, entries: int = 60) -> tuple[Path, SiteIdentity]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    identity = SiteIdentity.generate()
    log = AuditLog(tmp_path, identity)
    log.append("start", peer_id=identity.peer_id, round=0)
    for i in range(1, entries):
        log.append("sent", peer="p", round=i // 4, topic="update", digest=f"{i:032x}", bytes=i)
        if i % 10 == 0:
            log.close_round(i // 10, [], None)
    log.flush()
    return tmp_path / LOG_FILE, identity


_ANY_TEXT = st.text() | st.from_regex(r"[A-Za-z0-9_.:/+=-]*", fullmatch=True)


@given(
    peer=_ANY_TEXT,
    topic=_ANY_TEXT,
    round_=st.integers(-1, 2**40) | st.booleans(),
    size=st.integers(0, 2**40),
    way=st.sampled_from(["sent", "received"]) | st.text(),
)
def test_a_frames_entrys_data_is_its_canonical_json(
    peer: str, topic: str, round_: int, size: int, way: str
) -> None:
    """The formatted frames are byte for byte what the encoder makes (verify hashes the
    encoder's), and values the template cannot write as JSON fall back to it."""
    frame = (way, peer, round_, topic, size, "ab" * 16)  # as AuditLog.frame notes it
    assert frame_item(frame) == _json(list(frame))
    encoded = _json(["received", "p", 1, "update", 2, "cd" * 16])  # noted off the fast path
    assert frames_data([frame, encoded, frame]) == _json(
        {"frames": [list(frame), json.loads(encoded), list(frame)]}
    )


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(kind=st.text(), data=st.dictionaries(st.text(), _JSON, max_size=4))
def test_any_entry_is_written_as_its_canonical_json(kind: str, data: dict[str, object]) -> None:
    """An entry noted with ``append`` is sealed to exactly what verify hashes."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        log = AuditLog(Path(scratch), SiteIdentity.generate())
        log.append(kind, **data)
        (line,) = log.tail().encode().splitlines()  # bytes: only newlines end a line
        entry = json.loads(line)
        assert entry["kind"] == kind and entry["data"] == data
        assert line == canonical(entry)
        log.close()


def test_a_value_json_cannot_hold_fails_at_the_caller_and_the_log_goes_on(
    tmp_path: Path,
) -> None:
    log = AuditLog(tmp_path, SiteIdentity.generate())
    log.append("start", round=0)
    with pytest.raises(TypeError):
        log.append("membership", added={"a set"})
    log.append("finish", round=1)
    log.close()
    assert [json.loads(x)["kind"] for x in (tmp_path / LOG_FILE).read_text().splitlines()] == [
        "start",
        "finish",
    ]
    # recovering after something was logged would overwrite it: refused
    again = AuditLog(tmp_path, log.identity)
    again.append("start", round=1)
    with pytest.raises(RuntimeError, match="recovers before"):
        again.recover("")


def test_the_checkpoint_tail_holds_exactly_what_is_not_yet_synced(tmp_path: Path) -> None:
    """Noted entries join the tail when it is taken; a sync drops them from it, and a
    flush leaves nothing behind (a tool that never takes a tail does not pile it up)."""
    log = AuditLog(tmp_path, SiteIdentity.generate())
    log.append("start", round=0)
    log.frame("sent", "peer", 0, "update", b"frame", 9)
    first = log.tail().splitlines()
    assert [json.loads(line)["seq"] for line in first] == [0, 1]
    log.end_round(1, [], None)
    assert [json.loads(line)["seq"] for line in log.tail().splitlines()] == [0, 1, 2]
    log.flush()
    assert log.tail() == "" and log._tail_text == ""
    for r in range(2, 40):
        log.close_round(r, [], None)
    assert log._tail_text == ""
    log.close()
    entries = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [e["seq"] for e in entries] == list(range(41))
    assert entries[1]["data"]["frames"] == [
        ["sent", "peer", 0, "update", 9, frame_digest(b"frame")]
    ]
    assert verify(tmp_path / LOG_FILE, log.identity.peer_id).ok


def test_the_log_is_written_a_second_apart_not_every_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounds shorter than ``SYNC_EVERY_S`` leave their entries in the checkpoint's tail
    only; the first round's end after it writes and syncs all of them at once, signed."""
    monkeypatch.setattr("node.audit.log.SYNC_EVERY_S", 3600.0)
    log = AuditLog(tmp_path, SiteIdentity.generate())
    for r in range(30):
        log.frame("sent", "peer", r, "update", b"frame", 9)
        log.end_round(r + 1, [], None)
        log.tail()
    assert not (tmp_path / LOG_FILE).exists()
    assert len(log.tail().splitlines()) == 60
    log._last_sync -= 3600.0  # an hour on
    log.frame("sent", "peer", 30, "update", b"frame", 9)
    log.end_round(31, [], None)
    assert log._syncing is not None
    log._syncing.result()
    lines = (tmp_path / LOG_FILE).read_text().splitlines()
    assert len(lines) == 62 and "sig" in json.loads(lines[-1])
    assert log.tail() == ""
    assert verify(tmp_path / LOG_FILE, log.identity.peer_id).ok
    log.close()


def test_a_round_end_does_not_write_while_the_last_sync_is_still_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow disk: rounds go on noting entries into the tail, and the first round's end
    after the sync returns writes all of them in one signed write, in order."""
    import threading

    monkeypatch.setattr("node.audit.log.SYNC_EVERY_S", 0.0)
    log = AuditLog(tmp_path, SiteIdentity.generate())
    log.end_round(1, [], None)  # written, and its sync submitted
    assert log._syncing is not None
    log._syncing.result()
    disk = threading.Event()

    def sync_on_a_slow_disk() -> None:
        disk.wait()

    log._syncing = log.writer.submit(sync_on_a_slow_disk)
    for r in range(2, 6):
        log.frame("received", "peer", r, "update", b"frame", 9)
        log.end_round(r, [], None)
    assert len((tmp_path / LOG_FILE).read_text().splitlines()) == 1
    assert len(log.tail().splitlines()) == 8
    disk.set()
    log._syncing.result()
    log.end_round(6, [], None)
    assert log._syncing is not None
    log._syncing.result()
    entries = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [e["seq"] for e in entries] == list(range(10))
    assert [e["data"]["round"] for e in entries if e["kind"] == "round"] == list(range(1, 7))
    assert "sig" in entries[-1] and log.tail() == ""
    assert verify(tmp_path / LOG_FILE, log.identity.peer_id).ok
    log.close()


def test_a_frame_named_in_characters_json_escapes_is_logged_as_verify_reads_it(
    tmp_path: Path,
) -> None:
    """Peer and topic names off the fast path (quotes, tabs, non-ASCII) go through the
    encoder; a value JSON cannot hold fails at the caller, and the log goes on. Frames
    noted one after another are one entry."""
    log = AuditLog(tmp_path, SiteIdentity.generate())
    log.frame("sent", 'pe"er\té', 3, "up\ndate", b"frame", 9)
    log.frame("received", "peer", True, "update", b"frame", 9)  # a bool: the encoder's
    with pytest.raises(TypeError):
        log.frame("sent", "peer", 3, "update", b"frame", object())  # type: ignore[arg-type]
    log.frame("received", "peer", 4, "update", b"other", 5)
    log.close_round(4, [], None)
    log.close()
    entries = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [e["kind"] for e in entries] == ["frames", "round"]
    mine = frame_digest(b"frame")
    assert entries[0]["data"] == {
        "frames": [
            ["sent", 'pe"er\té', 3, "up\ndate", 9, mine],
            ["received", "peer", True, "update", 9, mine],
            ["received", "peer", 4, "update", 5, frame_digest(b"other")],
        ]
    }
    assert verify(tmp_path / LOG_FILE, log.identity.peer_id).ok


def test_frames_between_other_entries_keep_their_order(tmp_path: Path) -> None:
    """A batch is only frames noted one after another: an entry noted between them ends
    it, so the log's order is the order things happened."""
    from node.audit.check import frames_of, read_entries

    log = AuditLog(tmp_path, SiteIdentity.generate())
    log.frame("received", "a", 0, "update", b"1", 1)
    log.frame("received", "b", 0, "update", b"2", 2)
    log.append("sum_opened", round=0)
    log.frame("sent", "a", 1, "update", b"3", 3)
    log.tail()  # a seal (the write-ahead checkpoint) ends a batch too
    log.frame("sent", "b", 1, "update", b"4", 4)
    log.close_round(1, [], None)
    log.close()
    entries = read_entries(tmp_path / LOG_FILE)
    assert [e["kind"] for e in entries] == ["frames", "sum_opened", "frames", "frames", "round"]
    assert [f["bytes"] for e in entries for f in frames_of(e)] == [1, 2, 3, 4]
    assert [f["peer"] for e in entries for f in frames_of(e)] == ["a", "b", "a", "b"]


def test_a_consortium_run_leaves_a_verifiable_log_at_every_site(
    wisconsin16: FederatedData, tmp_path: Path
) -> None:
    spec = ConsortiumSpec(rounds=4, train=TRAIN, compressor="top-k:0.1", deadline_s=1.0)
    nodes = memory_nodes(write_consortium(tmp_path, subset(wisconsin16, 3), spec))
    run_nodes(nodes)
    logs = []
    for node in nodes:
        path = node.config.site.state_dir / LOG_FILE
        verdict = verify(path, node.identity.peer_id)
        assert verdict.ok, verdict
        kinds = [json.loads(line)["kind"] for line in path.read_text().splitlines()]
        for kind in ("config", "start", "frames", "round", "finish"):
            assert kind in kinds, kind
        ways = {f["dir"] for e in read_entries(path) for f in frames_of(e)}
        assert ways == {"sent", "received"}
        assert kinds.count("round") == 4
        for name in (LOG_FILE, HEAD_FILE):
            assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600
        logs.append(path)
    # neighbours' logs agree: nothing logged as received that the other did not send
    result = cross_check(logs[0], logs[1])
    assert result.ok and result.matched >= 4 and result.beyond == 0
    # A log that ends early (read while its node runs, or a crash it was never restarted
    # from: the last rounds are only in its checkpoint) is behind, not lying.
    full = logs[0].read_text()
    lines = full.splitlines(keepends=True)
    rounds = [n for n, line in enumerate(lines) if json.loads(line)["kind"] == "round"]
    logs[0].write_text("".join(lines[: rounds[1] + 1]))  # rounds 0 and 1 finished
    behind = cross_check(logs[0], logs[1])
    assert behind.ok and behind.beyond > 0 and behind.matched >= 2, behind
    # ... while a frame logged received in a round both finished, never sent, still shows
    sender = nodes[0].identity.peer_id  # node 1 also hears node 2: the frame must be node 0's
    received = next(
        f
        for e in read_entries(logs[1])
        for f in frames_of(e)
        if f["dir"] == "received" and f["round"] == 0 and f["peer"] == sender
    )
    forged = {"kind": "frames", "data": {"frames": [[*[*received.values()][:5], "00" * 16]]}}
    (tmp_path / "lying.log").write_text(logs[1].read_text() + json.dumps(forged) + "\n")
    assert cross_check(logs[0], tmp_path / "lying.log").received_not_sent == 1
    logs[0].write_text(full)
    # a restart continues the same chain
    again = memory_nodes([n.config.path for n in nodes])
    run_nodes(again)
    assert verify(logs[0], nodes[0].identity.peer_id).ok
    assert [json.loads(x)["kind"] for x in logs[0].read_text().splitlines()].count("start") == 2


def test_a_thousand_random_tamperings_are_all_detected_at_the_right_entry(tmp_path: Path) -> None:
    path, identity = _synthetic(tmp_path)
    lines = path.read_text().splitlines()
    assert verify(path, identity.peer_id).ok
    rng = random.Random(7)
    seen: dict[str, int] = {}
    for _ in range(1000):
        kind, tampered, first_bad = random_tampering(lines, rng)
        path.write_text("".join(line + "\n" for line in tampered))
        verdict = verify(path, identity.peer_id)
        assert not verdict.ok, kind
        assert verdict.first_bad == first_bad, (kind, verdict, first_bad)
        seen[kind] = seen.get(kind, 0) + 1
    assert len(seen) == 6 and min(seen.values()) > 100


def test_one_signature_covers_a_write_and_forgeries_without_the_key_show(tmp_path: Path) -> None:
    """Only the last entry of each write is signed; entries appended or a chain rewritten
    without the key are still caught, the latter at the signature that vouched for it."""
    path, identity = _synthetic(tmp_path)
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    signed = [n for n, entry in enumerate(entries) if "sig" in entry]
    assert signed == [11, 22, 33, 44, 55, 64]  # each close_round's write, and the last
    # a stranger appends entries (no key, so no signature)
    stranger = AuditLog(tmp_path, SiteIdentity.generate())
    stranger.append("sent", peer="q", round=99, topic="update", digest="ff" * 16, bytes=1)
    stranger._seal()
    stranger.pending[-1] = (stranger.seq, stranger.pending[-1][1], None)  # left unsigned
    stranger.close()
    verdict = verify(path, identity.peer_id, head=tmp_path / "no-head")
    assert verdict.first_bad == 65 and "covered by no signature" in verdict.reason, verdict
    # entry 25 edited and the chain rewritten from it on: the signatures cannot be
    entries[25]["data"]["bytes"] = 0
    for n in range(26, len(entries)):
        entries[n]["prev"] = digest(entries[n - 1]).hex()
    path.write_text(
        "".join(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in entries)
    )
    verdict = verify(path, identity.peer_id)
    assert verdict.first_bad == 33 and "entries 23 to 32" in verdict.reason, verdict


def test_a_log_torn_by_a_crash_is_repaired_and_continues(tmp_path: Path) -> None:
    path, identity = _synthetic(tmp_path, entries=12)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"seq": 12, "t": 1')  # a crash in mid-write
    log = AuditLog(tmp_path, identity)
    assert path.read_bytes() == whole
    log.append("start", peer_id=identity.peer_id, round=3)
    log.flush()
    assert verify(path, identity.peer_id).ok


def test_audit_cli_verifies_shows_and_cross_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = _synthetic(tmp_path / "a")
    assert main(["audit", "verify", str(path)]) == 0
    assert "intact" in capsys.readouterr().out
    assert main(["audit", "show", str(path), "--kind", "start"]) == 0
    assert capsys.readouterr().out.count("\n") == 1
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5] + lines[6:]) + "\n")
    assert main(["audit", "verify", str(path)]) == 1
    assert "entry 5" in capsys.readouterr().out
    assert main(["audit", "verify", str(tmp_path / "nothing.log")]) == 2
    # B claims a frame from A that A never logged sending
    a_id, b_id = SiteIdentity.generate(), SiteIdentity.generate()
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    a, b = AuditLog(tmp_path / "A", a_id), AuditLog(tmp_path / "B", b_id)
    a.append("start", peer_id=a_id.peer_id)
    b.append("start", peer_id=b_id.peer_id)
    a.frame("sent", b_id.peer_id, 0, "update", b"one", 10)
    a.frame("received", b_id.peer_id, 0, "update", b"two", 10)
    b.frame("received", a_id.peer_id, 0, "update", b"one", 10)
    b.frame("sent", a_id.peer_id, 0, "update", b"two", 10)
    # a log written before frames were batched: one entry a frame, read the same
    a.frame("sent", b_id.peer_id, 1, "update", b"three", 10)
    three = frame_digest(b"three")
    b.append("received", peer=a_id.peer_id, round=1, topic="update", digest=three, bytes=10)
    a.flush()
    b.flush()
    assert main(["audit", "cross-check", str(a.path), str(b.path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert ["2 frames match" in out[0], "1 frames match" in out[1]] == [True, True], out
    assert main(["audit", "show", str(b.path), "--kind", "sent"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 2 and "1 of 2" in shown[0] and shown[1].split()[:2] == ["sent", "to"]
    b.append("received", peer=a_id.peer_id, round=1, topic="update", digest="bb", bytes=10)
    b.flush()
    assert main(["audit", "cross-check", str(a.path), str(b.path)]) == 1
    assert "1 logged received and never sent" in capsys.readouterr().out


def test_a_log_whose_last_entry_was_mangled_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    from node.errors import ConfigError

    path, identity = _synthetic(tmp_path, entries=5)
    path.write_bytes(path.read_bytes() + b"not an entry\n")
    with pytest.raises(ConfigError, match="does not parse"):
        AuditLog(tmp_path, identity)


def test_a_checkpoint_taken_just_after_a_sync_loads_and_recovers_nothing(
    tmp_path: Path,
) -> None:
    """Nothing unsynced: the checkpoint's tail is empty, and must still load under
    ``weights_only`` (an empty ``bytes`` did not: a node crashed then could not restart)."""
    from node.state import checkpoint

    identity = SiteIdentity.generate()
    log = AuditLog(tmp_path, identity)
    log.append("start", peer_id=identity.peer_id, round=0)
    log.close_round(1, [], None)
    assert log.tail() == ""
    checkpoint.save(tmp_path / "checkpoint.pt", {"audit_tail": log.tail()})
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert saved is not None and saved["audit_tail"] == ""
    again = AuditLog(tmp_path, identity)
    assert again.recover(saved["audit_tail"]) == 0
    log.frame("sent", "p", 1, "update", b"frame", 1)
    checkpoint.save(tmp_path / "checkpoint.pt", {"audit_tail": log.tail()})
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert saved is not None
    assert [json.loads(x)["kind"] for x in saved["audit_tail"].splitlines()] == ["frames"]


def test_entries_a_crash_lost_from_the_unsynced_log_come_back_from_the_checkpoint(
    wisconsin16: FederatedData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log is fsynced only once a second; what the disk lost in a crash is in the
    checkpoint (fsynced every round) and the restarted node puts it back, in order."""
    from node.key_admin import CHECKPOINT_FILE
    from node.state import checkpoint

    # The first run syncs at the end of round 8 only, whatever the clock says, so rounds
    # 9-11 are in the last checkpoint's tail and not yet on disk.
    monkeypatch.setattr(AuditLog, "_sync_due", lambda log: json.loads(log.raw[-1][1])["round"] == 8)

    spec = ConsortiumSpec(rounds=11, train=TRAIN, compressor="top-k:0.1", deadline_s=1.0)
    paths = write_consortium(tmp_path, subset(wisconsin16, 3), spec)
    nodes = memory_nodes(paths)
    run_nodes(nodes)
    monkeypatch.undo()
    state = nodes[0].config.site.state_dir
    saved = checkpoint.load(state / CHECKPOINT_FILE)
    assert saved is not None
    assert isinstance(saved["audit_tail"], str)  # one object for the pickler
    tail = [json.loads(line) for line in saved["audit_tail"].splitlines()]
    tail_rounds = [e["data"]["round"] for e in tail if e["kind"] == "round"]
    assert tail_rounds == [9, 10, 11], tail_rounds
    # The crash: the disk lost everything after the last sync (and the head with it).
    lines = (state / LOG_FILE).read_text().splitlines(keepends=True)
    lost_from = tail[0]["seq"]
    (state / LOG_FILE).write_text("".join(lines[:lost_from]) + lines[lost_from][:25])
    for path in paths:
        path.write_text(path.read_text().replace("rounds = 11", "rounds = 13"))
    again = memory_nodes(paths)
    run_nodes(again)
    (recovered,) = events(again[0], "audit_recovered")
    assert recovered["entries"] == len(tail)
    entries = [json.loads(line) for line in (state / LOG_FILE).read_text().splitlines()]
    back = entries[lost_from : lost_from + len(tail)]
    assert back[:-1] == tail[:-1]  # back, byte for byte
    # the last was not written yet when the checkpoint was taken: recovery's write signs it
    assert "sig" in back[-1] and {k: v for k, v in back[-1].items() if k != "sig"} == tail[-1]
    assert verify(state / LOG_FILE, nodes[0].identity.peer_id).ok
    assert [e["data"]["round"] for e in entries if e["kind"] == "round"] == list(range(1, 14))
    assert cross_check(state / LOG_FILE, nodes[1].config.site.state_dir / LOG_FILE).ok
    # A tail that does not continue the log (entries lost before it) is refused.
    (tmp_path / "other").mkdir()
    log = AuditLog(tmp_path / "other", SiteIdentity.generate())
    log.append("start", round=0)
    log.flush()
    with pytest.raises(ConfigError, match="lost entries or was replaced"):
        log.recover(saved["audit_tail"])


def test_the_readers_take_any_entry_a_log_holds_without_failing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log is evidence, so ``show`` and ``cross-check`` read whatever it holds: items
    not shaped as frames, or of other types, are not frames (verify judges the entries)."""
    from node.audit.check import describe

    good = ["received", "A", 1, "update", 2, "ab"]
    odd: list[object] = [
        5,
        "x",
        [None, "A", 1, "update", 2, "ab"],
        [["sent"], "A", 1, "update", 2, "ab"],
        ["received", "A", [1], "update", 2, "ab"],
        ["received", "A", True, "update", 2, "ab"],
        good[:5],
        good,
    ]
    entries: list[object] = [
        {"seq": 0, "t": 0, "kind": "frames", "data": {"frames": odd}},
        {"seq": 1, "t": 0, "kind": "frames", "data": {"frames": 5}},
        {
            "seq": 2,
            "t": 0,
            "kind": "received",
            "data": {
                **dict(zip(("peer", "round"), ("A", 1), strict=True)),
                "dir": "sent",
                "topic": "update",
                "bytes": 2,
                "digest": "ab",
            },
        },
        {"seq": 3, "t": 0, "kind": "frames", "data": "not a dict"},
    ]
    assert frames_of(entries[0]) == [
        dict(zip(("dir", "peer", "round", "topic", "bytes", "digest"), good, strict=True))
    ]
    assert frames_of(entries[1]) == [] and frames_of(entries[3]) == [] and frames_of([1]) == []
    assert frames_of(entries[2])[0]["dir"] == "received"  # the entry's kind, not its data's
    assert "1 of 8" in describe(entries[0]) and "0 of 0" in describe(entries[1])  # type: ignore[arg-type]
    path = tmp_path / "odd.log"
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    for kinds in ([], ["--kind", "sent"], ["--kind", "round"]):
        assert main(["audit", "show", str(path), *kinds]) == 0
    assert cross_check(path, path).ok
    capsys.readouterr()


def test_a_value_json_cannot_hold_in_a_frame_fails_when_noted(tmp_path: Path) -> None:
    """Text with a lone surrogate, or a number past 64 bits, is encoded when noted, so it
    fails at the caller and never at a later seal (which would stop every checkpoint)."""
    log = AuditLog(tmp_path, SiteIdentity.generate())
    with pytest.raises(UnicodeEncodeError):
        log.frame("received", "p", 1, "up\ud800", b"x", 1)
    with pytest.raises(ValueError):
        log.frame("received", "p", 10**5000, "update", b"x", 1)
    log.frame("received", "pé", 2**70, "update", b"x", 1)  # JSON holds these: logged
    log.close_round(1, [], None)
    log.close()
    entries = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert entries[0]["data"]["frames"] == [
        ["received", "pé", 2**70, "update", 1, frame_digest(b"x")]
    ]
    assert verify(tmp_path / LOG_FILE, log.identity.peer_id).ok
