from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from node.errors import UnknownCompressorError
from node.gossip.compress import AdaptiveTopK, BlockK, SharedIndexCompressor
from node.gossip.quantize import stochastic_quantize
from node.gossip.registry import parse_compressor

vectors = arrays(np.float32, st.integers(8, 300), elements=st.floats(-1e3, 1e3, width=32))
fractions = st.floats(0.01, 1.0)


@settings(max_examples=60, deadline=None)
@given(vectors, fractions)
def test_top_k_is_a_contraction(v: np.ndarray, f: float) -> None:
    x = torch.from_numpy(v).double()
    q = parse_compressor(f"top-k:{f}").compress(x, 0).to_dense()[0]
    k = max(1, round(f * len(v)))
    err = float(((q - x) ** 2).sum())
    assert err <= (1 - k / len(v)) * float((x**2).sum()) * (1 + 1e-9) + 1e-9


@pytest.mark.parametrize("spec", ["rand-k:0.1", "block-k:0.1:8"])
def test_shared_seed_compressors_contract_in_expectation(spec: str) -> None:
    x = torch.randn(400, dtype=torch.float64)
    comp = parse_compressor(spec, seed=5)
    errs = [float(((comp.compress(x, t).to_dense()[0] - x) ** 2).sum()) for t in range(400)]
    delta = 1 - np.mean(errs) / float((x**2).sum())
    assert 0.07 < delta < 0.13  # E‖C(x) − x‖² = (1 − k/d)‖x‖² with k/d = 0.1


@pytest.mark.parametrize("spec", ["rand-k:0.05", "block-k:0.05:16"])
def test_shared_seed_gives_identical_indices_on_every_node(spec: str) -> None:
    a, b = parse_compressor(spec, seed=42), parse_compressor(spec, seed=42)
    x, y = torch.randn(3, 1000), torch.randn(1, 1000)
    for t in range(5):
        qa, qb = a.compress(x, t), b.compress(y, t)
        assert qa.indices is not None and qb.indices is not None
        assert torch.equal(qa.indices, qb.indices)
    assert not torch.equal(a.compress(x, 0).indices, a.compress(x, 1).indices)  # type: ignore[arg-type]
    assert a.compress(x, 3).shared_round == 3  # the codec sends this round, not the indices


@pytest.mark.parametrize(
    ("dim", "spec"),
    [(400, "block-k:0.1:8"), (1000, "block-k:0.1:16"), (400, "rand-k:0.1"), (1000, "rand-k:0.07")],
)
def test_shared_index_compressors_take_every_slot_within_a_pass(dim: int, spec: str) -> None:
    """Slots are taken without replacement: no block (block-k) or coordinate (rand-k)
    waits more than two passes (drawn afresh each round, some waited many times longer),
    and a round keeps its share."""
    comp = parse_compressor(spec, seed=3)
    assert isinstance(comp, SharedIndexCompressor)
    if isinstance(comp, BlockK):
        unit, n, take = comp._blocks(dim)
    else:
        unit, n, take = 1, dim, round(comp.kept_fraction(dim) * dim)
    per_pass = math.ceil(n / take)
    last = torch.full((n,), -1)
    longest = 0
    for t in range(12 * per_pass):
        chosen = torch.unique(comp.indices(dim, t) // unit)
        within_one_pass = t * take // n == ((t + 1) * take - 1) // n
        assert len(chosen) == take if within_one_pass else len(chosen) <= take
        longest = max(longest, int((t - last[chosen]).max()))
        last[chosen] = t
    assert int((12 * per_pass - last).max()) <= 2 * per_pass
    assert longest <= 2 * per_pass
    # the same for every node, from the seed alone
    again = parse_compressor(spec, seed=3)
    assert isinstance(again, SharedIndexCompressor)
    assert all(torch.equal(comp.indices(dim, t), again.indices(dim, t)) for t in range(30))


def test_quantizer_is_unbiased() -> None:
    values = torch.randn(1, 64, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    mean = torch.stack([stochastic_quantize(values, gen) for _ in range(4000)]).mean(0)
    scale = float(values.abs().max()) / 127
    assert torch.allclose(mean, values, atol=0.05 * scale)
    single = stochastic_quantize(values, gen)
    assert (single - values).abs().max() <= scale + 1e-12


def test_q8_values_are_integer_levels_of_a_row_quantum() -> None:
    q8 = parse_compressor("top-k:0.1+q8").compress(torch.randn(2, 1000), 0)
    assert q8.quantum is not None
    levels = q8.values / q8.quantum.unsqueeze(1)
    torch.testing.assert_close(levels, levels.round())
    assert float(levels.abs().max()) <= 127


def test_adaptive_top_k_follows_label_entropy() -> None:
    ratios = AdaptiveTopK.ratios_from_labels(0.1, [[50, 50], [90, 10], [100, 0]])
    assert ratios[0] == pytest.approx(0.1) and ratios[0] > ratios[1] > ratios[2] == 0.0
    comp = parse_compressor("top-k:adaptive:0.1", label_counts=[[50, 50], [90, 10], [100, 0]])
    q = comp.compress(torch.randn(3, 1000), 0)
    assert q.kept.tolist() == [100, 47, 1]
    assert (q.to_dense() != 0).sum(1).tolist() == [100, 47, 1]


@pytest.mark.parametrize(
    "spec", ["top-k:0", "top-k:1.5", "rand-k:x", "zip:0.1", "top-k:0.1+q4", "block-k:0.1:z"]
)
def test_bad_compressor_specs(spec: str) -> None:
    with pytest.raises(UnknownCompressorError):
        parse_compressor(spec)


@pytest.mark.parametrize(
    ("fraction", "dim", "block"), [(0.1, 1058, 16), (0.01, 1058, 2), (0.01, 5_000_000, 4096)]
)
def test_block_size_follows_dimension_and_packing(fraction: float, dim: int, block: int) -> None:
    """Blocks leave at least four a round, are powers of two, and stop at 4,096 slots."""
    comp = parse_compressor(f"block-k:{fraction}")
    assert isinstance(comp, BlockK)
    assert comp.block_for(dim) == block
    assert abs(comp.kept_fraction(dim) - fraction) <= 0.15 * fraction  # half a block of four


def test_block_k_fractions_differ_on_a_small_model() -> None:
    """With fixed 256-blocks a 1,058-parameter model kept one block (24%) at 5% and at 10%."""
    dim = 1058
    kept = [parse_compressor(f"block-k:{f}").kept_fraction(dim) for f in (0.05, 0.1)]
    assert kept[0] < kept[1]
    assert parse_compressor("block-k:0.1:256").kept_fraction(dim) == pytest.approx(1 / 5)


def test_stacked_adaptive_rows_lead_with_what_they_send() -> None:
    """Gradient tracking stacks [x | v]; top-k:adaptive pads each part's rows to the
    largest k. A row's first ``kept`` entries must be every part's kept ones (the
    simulator sends that prefix), not the first part's padding."""
    from node.gossip.compress import AdaptiveTopK, Stacked

    x = torch.randn(2, 40)
    q = Stacked(AdaptiveTopK(0.5, [0.5, 0.1]), 2).compress(x, 0)
    assert q.indices is not None
    for r in range(2):
        k = int(q.kept[r])
        sent = q.indices[r, :k]
        assert torch.equal(q.values[r, :k], x[r, sent])
        halves = [int((sent < 20).sum()), int((sent >= 20).sum())]
        assert halves[0] == halves[1] == k // 2  # both parts, each its own k
