"""Aggregator choice and the signed contributor bitmap of secure aggregation."""

from __future__ import annotations

from collections import Counter

import pytest

from crypto.errors import BadSignatureError
from crypto.identity import SiteIdentity
from node.exchange.plan import (
    MIN_CONTRIBUTORS,
    aggregator_order,
    disjoint_sums,
    pick_aggregator,
    sign_contributors,
    verify_contributors,
)

SITES = [SiteIdentity(bytes([i + 1]) * 32) for i in range(5)]  # fixed: repeatable picks
IDS = [s.peer_id for s in SITES]


def test_aggregator_is_a_neighbour_never_the_receiver_and_the_same_everywhere() -> None:
    receiver, neighbours = IDS[0], IDS[1:]
    picks = Counter(pick_aggregator(receiver, [*neighbours, receiver], t, 7) for t in range(400))
    assert set(picks) == set(neighbours)  # every neighbour takes its turn, the receiver never
    assert min(picks.values()) > 60  # roughly uniform over 400 rounds and 4 neighbours
    assert pick_aggregator(receiver, list(reversed(neighbours)), 3, 7) == pick_aggregator(
        receiver, neighbours, 3, 7
    )


def test_an_absent_aggregator_is_replaced_by_the_next_in_seeded_order() -> None:
    order = aggregator_order(IDS[0], IDS[1:], 11, 0)
    assert pick_aggregator(IDS[0], IDS[1:], 11, 0, absent={order[0]}) == order[1]
    assert pick_aggregator(IDS[0], IDS[1:], 11, 0, absent=set(IDS)) is None


def test_bitmap_is_signed_over_the_sum_and_needs_two_contributors() -> None:
    aggregator, receiver, neighbours = SITES[1], IDS[0], IDS[1:]
    total = b"ciphertext-of-the-sum"
    record = sign_contributors(aggregator, receiver, 4, IDS[1:3], neighbours, total)
    verify_contributors(record, aggregator.public_key, total)
    assert sorted(record.members(neighbours)) == sorted(IDS[1:3])
    assert record.decryptable(neighbours) and MIN_CONTRIBUTORS == 2
    alone = sign_contributors(aggregator, receiver, 4, IDS[1:2], neighbours, total)
    assert not alone.decryptable(neighbours)
    with pytest.raises(BadSignatureError, match="not the one"):
        verify_contributors(record, aggregator.public_key, b"another sum")
    with pytest.raises(BadSignatureError):
        verify_contributors(record, SITES[2].public_key, total)
    with pytest.raises(ValueError, match="not neighbours"):
        sign_contributors(aggregator, receiver, 4, [IDS[0]], neighbours, total)


def test_only_disjoint_sums_of_two_or_more_are_opened() -> None:
    # {a,b,c} and {a,b} overlap: opening both would expose c alone, so only the larger opens.
    assert disjoint_sums([0b011, 0b111]) == [1]
    assert disjoint_sums([0b0011, 0b1100]) == [0, 1]  # two aggregators, disjoint halves
    assert disjoint_sums([0b0001, 0b0110]) == [1]  # a sum of one is never opened
    assert disjoint_sums([]) == []
