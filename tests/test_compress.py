from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from node.compress import AdaptiveTopK, parse_compressor
from node.errors import UnknownCompressorError
from node.quantize import stochastic_quantize

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
    assert a.compress(x, 0).wire_bytes[0] == 4 * a.compress(x, 0).values.shape[1]  # no index bytes


def test_quantizer_is_unbiased() -> None:
    values = torch.randn(1, 64, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    mean = torch.stack([stochastic_quantize(values, gen) for _ in range(4000)]).mean(0)
    scale = float(values.abs().max()) / 127
    assert torch.allclose(mean, values, atol=0.05 * scale)
    single = stochastic_quantize(values, gen)
    assert (single - values).abs().max() <= scale + 1e-12


def test_q8_wire_bytes() -> None:
    x = torch.randn(2, 1000)
    plain = parse_compressor("top-k:0.1").compress(x, 0)
    q8 = parse_compressor("top-k:0.1+q8").compress(x, 0)
    assert float(plain.wire_bytes[0]) == 100 * 8
    assert float(q8.wire_bytes[0]) == 100 * (1 + 4) + 4


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
