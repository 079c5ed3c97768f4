"""Per-link backlog: in-order application, no double counting, resets, and the wire form."""

from __future__ import annotations

import pytest
import torch

from node.errors import MalformedFrameError
from node.state.backlog import InboundLink, OutboundLink
from node.wire.update import decode_update, encode_update


def _sparse(out: OutboundLink, index: int, value: float) -> None:
    out.push(torch.tensor([index]), torch.tensor([value]))


def test_items_apply_once_and_in_order() -> None:
    out, inbound, s = OutboundLink(), InboundLink(total=torch.zeros(4)), torch.zeros(4)
    _sparse(out, 0, 1.0)
    _sparse(out, 1, 2.0)
    frame = out.frame(0)
    assert inbound.accept(frame[1:], s) == -1  # a gap: nothing applied
    assert inbound.accept(frame, s) == 1
    assert inbound.accept(frame, s) == 1  # a duplicate frame changes nothing
    torch.testing.assert_close(s, torch.tensor([1.0, 2.0, 0.0, 0.0]))
    assert inbound.total is not None
    torch.testing.assert_close(inbound.total, s)
    out.ack(1)
    assert not out.pending


def test_reset_replaces_the_link_total_and_skips_superseded_items() -> None:
    out, s = OutboundLink(), torch.full((3,), 10.0)
    inbound = InboundLink(total=torch.ones(3))  # s holds 1.0 per slot from this link
    _sparse(out, 0, 5.0)  # lost in transit
    out.reset(torch.tensor([2.0, 3.0, 4.0]))
    _sparse(out, 2, 1.0)
    assert [i.seq for i in out.frame(0)] == [1, 2]  # the reset dropped the older item
    inbound.accept(out.frame(0), s)
    torch.testing.assert_close(s, torch.tensor([11.0, 12.0, 14.0]))
    assert inbound.applied == 2


def test_items_go_once_and_again_only_when_unacknowledged() -> None:
    """Fault-free, each item crosses the link once (its ack comes a round later); an item
    still unacknowledged RESEND_AFTER rounds after sending takes the whole backlog again."""
    out = OutboundLink()
    _sparse(out, 0, 1.0)
    first = out.frame(0)
    out.mark_sent(first, 0)
    _sparse(out, 1, 2.0)
    assert [i.seq for i in out.frame(1)] == [1]  # item 0 awaits its ack: not resent yet
    out.mark_sent(out.frame(1), 1)
    out.ack(0)
    _sparse(out, 2, 3.0)
    assert [i.seq for i in out.frame(2)] == [2]
    out.mark_sent(out.frame(2), 2)
    # item 1 was lost: no ack for it by round 3, so 1 and 2 go again, with the new 3
    _sparse(out, 3, 4.0)
    assert [i.seq for i in out.frame(3)] == [1, 2, 3]


def test_reset_on_a_link_without_total_is_refused() -> None:
    out = OutboundLink()
    out.reset(torch.zeros(2))
    with pytest.raises(ValueError, match="keeps no total"):
        InboundLink().accept(out.frame(0), torch.zeros(2))


def test_wire_round_trip_keeps_resets() -> None:
    out = OutboundLink()
    _sparse(out, 3, 0.5)
    out.reset(torch.arange(4.0))
    decoded = decode_update(encode_update(4, 7, out.frame(0)), 4)
    assert decoded.ack == 7
    assert [(i.seq, i.reset) for i in decoded.items] == [(1, True)]
    torch.testing.assert_close(decoded.items[0].values, torch.arange(4.0))


def test_sparse_reset_items_are_malformed() -> None:
    import msgpack

    payload = msgpack.packb(
        {
            "dim": 4,
            "ack": -1,
            "inc": [bytes(8), bytes(8)],
            "items": [[0, b"\x00\x00\x00\x00", b"\x00\x00\x80?", True]],
        }
    )
    with pytest.raises(MalformedFrameError, match="reset items are dense"):
        decode_update(payload, 4)
