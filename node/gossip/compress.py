"""Compressors C(x) for CHOCO gossip: ``compress(vectors, round) -> Sparse``, pure and seeded.

Each compressor is a δ-contraction, E‖C(x) − x‖² ≤ (1 − δ)‖x‖², which is what CHOCO-SGD
needs to converge with error feedback; the residual x − x̂ is never lost, only delayed.

Specs: ``identity``; ``top-k:F``; ``rand-k:F`` and ``block-k:F[:B]`` (index set from the
public per-round seed, identical on every node); ``top-k:adaptive[:F]`` (per-node keep
ratio F·H_i/log C from the entropy H_i of the node's label distribution); any of them with
``+q8`` for unbiased 8-bit stochastic quantization of the kept values.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from node.errors import ConfigError, UnknownCompressorError
from node.gossip.quantize import Quantized
from node.gossip.sparse import Sparse


class Compressor(Protocol):
    """Maps a (K, d) batch of vectors to their compressed form for round ``round``."""

    name: str

    def compress(self, vectors: torch.Tensor, round: int) -> Sparse: ...

    def kept_fraction(self, dim: int) -> float:
        """The expected share of a ``dim``-vector's coordinates one round sends."""
        ...


def _as_batch(vectors: torch.Tensor) -> torch.Tensor:
    return vectors.unsqueeze(0) if vectors.dim() == 1 else vectors


def _kept(rows: int, k: int, device: torch.device) -> torch.Tensor:
    return torch.full((rows,), k, dtype=torch.int64, device=device)


def round_generator(seed: int, round: int, salt: int) -> torch.Generator:
    """A CPU generator keyed by (public seed, round, purpose): same on every node."""
    gen = torch.Generator()
    gen.manual_seed((seed * 1_000_003 + round * 7919 + salt) % (2**63 - 1))
    return gen


@functools.lru_cache(maxsize=8)
def _pass_order(seed: int, stream: int, n: int, number: int) -> torch.Tensor:
    """Pass ``number``'s shuffle of ``n`` items (public: seed, purpose and pass alone).
    Cached: a node asks for the same round's slots several times, and a pass spans many
    rounds. Callers only index it."""
    return torch.randperm(n, generator=round_generator(seed, number, stream))


def without_replacement(seed: int, stream: int, n: int, take: int, round: int) -> torch.Tensor:
    """Round ``round``'s ``take`` of ``n`` items, taken without replacement: the items of
    a stream of passes, each a fresh public shuffle of all n, ``take`` to a round. Every
    item is taken once a pass, so none waits more than two passes; any one round's items
    are still a uniform draw. Sorted; a round that spans two passes holds an item it meets
    in both once, so it can keep a few fewer (about take²/(4n) at most on average)."""
    positions = torch.arange(round * take, (round + 1) * take)
    kept = torch.zeros(n, dtype=torch.bool)
    for number in range(round * take // n, ((round + 1) * take - 1) // n + 1):
        here = positions[positions // n == number] % n
        kept[_pass_order(seed, stream, n, number)[here]] = True
    return kept.nonzero().squeeze(1)


class Identity:
    """No compression: the dense update (CHOCO with C = id and γ = 1 is D-PSGD)."""

    name = "identity"

    def compress(self, vectors: torch.Tensor, round: int) -> Sparse:
        x = _as_batch(vectors)
        return Sparse(x.clone(), None, x.shape[1], _kept(x.shape[0], x.shape[1], x.device))

    def kept_fraction(self, dim: int) -> float:
        return 1.0


def keep_count(fraction: float, dim: int) -> int:
    return max(1, min(dim, round(fraction * dim)))


class TopK:
    """The k largest-magnitude coordinates of each row; indices are sent (gap-coded: about
    one byte each at 10% of the coordinates, node.wire.update)."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.name = f"top-k:{fraction:g}"

    def compress(self, vectors: torch.Tensor, round: int) -> Sparse:
        x = _as_batch(vectors)
        k = keep_count(self.fraction, x.shape[1])
        _, idx = torch.topk(x.abs(), k, dim=1, sorted=False)
        return Sparse(torch.gather(x, 1, idx), idx, x.shape[1], _kept(x.shape[0], k, x.device))

    def kept_fraction(self, dim: int) -> float:
        return keep_count(self.fraction, dim) / dim


class AdaptiveTopK:
    """Top-k with a per-node keep ratio F·H_i / log C (H_i: entropy of node i's labels).

    A node whose labels are nearly single-class sends less; a node with a balanced label
    mix, whose update carries information about every class, sends more. Purely local: a
    node needs only its own label counts. ``rows`` gives the keep ratio of each row.
    """

    def __init__(self, fraction: float, ratios: Sequence[float]) -> None:
        self.fraction = fraction
        self.ratios = torch.tensor([min(1.0, max(0.0, r)) for r in ratios], dtype=torch.float64)
        self.name = f"top-k:adaptive:{fraction:g}"

    @staticmethod
    def ratios_from_labels(fraction: float, label_counts: Sequence[Sequence[int]]) -> list[float]:
        out = []
        for counts in label_counts:
            total = float(sum(counts))
            probs = [c / total for c in counts if c > 0] if total else []
            entropy = -sum(p * math.log(p) for p in probs)
            classes = max(2, len(counts))
            out.append(fraction * entropy / math.log(classes))
        return out

    def compress(self, vectors: torch.Tensor, round: int) -> Sparse:
        x = _as_batch(vectors)
        d = x.shape[1]
        if self.ratios.numel() != x.shape[0]:
            raise ValueError(
                f"adaptive top-k has {self.ratios.numel()} node ratios, got {x.shape[0]} rows"
            )
        ks = torch.tensor([keep_count(float(r), d) for r in self.ratios], device=x.device)
        k_max = int(ks.max())
        _, idx = torch.topk(x.abs(), k_max, dim=1, sorted=True)
        vals = torch.gather(x, 1, idx)
        keep = torch.arange(k_max, device=x.device).unsqueeze(0) < ks.unsqueeze(1)
        return Sparse(vals * keep, idx, d, ks)

    def row_fractions(self, dim: int) -> list[float]:
        """Each node's own kept share (the nodes' ratios differ)."""
        return [keep_count(float(r), dim) / dim for r in self.ratios]

    def kept_fraction(self, dim: int) -> float:
        return sum(self.row_fractions(dim)) / len(self.ratios)


class SharedIndexCompressor:
    """Compressors whose index set comes from the public round seed alone."""

    name: str

    def indices(self, dim: int, round: int) -> torch.Tensor:
        raise NotImplementedError

    def kept_fraction(self, dim: int) -> float:
        """The probability that a coordinate is in a round's index set (the same for
        every coordinate): E‖C(x) − x‖² = (1 − kept_fraction)‖x‖² exactly."""
        raise NotImplementedError

    def compress(self, vectors: torch.Tensor, round: int) -> Sparse:
        x = _as_batch(vectors)
        idx = self.indices(x.shape[1], round).to(x.device)
        return self.compress_columns(x[:, idx], idx, x.shape[1], round)

    def compress_columns(
        self, columns: torch.Tensor, idx: torch.Tensor, dim: int, round: int
    ) -> Sparse:
        """The compressed form when the caller already gathered this round's columns."""
        kept = _kept(columns.shape[0], idx.numel(), columns.device)
        return Sparse(columns, idx, dim, kept, shared_round=round)


class RandK(SharedIndexCompressor):
    """k coordinates from the public round seed: same slots on every node. Taken without
    replacement (:func:`without_replacement`): every coordinate once every ⌈d / k⌉
    rounds; drawn afresh each round, at 10% one coordinate in 25 waited 30 rounds or more.
    """

    def __init__(self, fraction: float, seed: int) -> None:
        self.fraction = fraction
        self.seed = seed
        self.name = f"rand-k:{fraction:g}"

    def indices(self, dim: int, round: int) -> torch.Tensor:
        k = keep_count(self.fraction, dim)
        return without_replacement(self.seed, RAND_K_PASS_STREAM, dim, k, round)

    def kept_fraction(self, dim: int) -> float:
        return keep_count(self.fraction, dim) / dim


CKKS_SLOTS = 4096  # values one CKKS ciphertext holds (crypto.ckks: N = 4096, two a slot)
# round_generator's purposes for the pass orders (1, 2: the earlier per-round draws; 3: tail)
BLOCK_K_PASS_STREAM, RAND_K_PASS_STREAM = 5, 6
MIN_BLOCKS = 4


def block_size(fraction: float, dim: int) -> int:
    """The default block length for keeping ``fraction`` of a ``dim``-vector.

    The largest power of two that still leaves at least MIN_BLOCKS blocks a round (so the
    kept share is within about 1/(2·MIN_BLOCKS) of ``fraction``), capped at the 4,096
    slots of one CKKS ciphertext. Powers of two up to 4,096 divide the slot count, so a
    large model's contribution of whole 4,096-blocks fills whole ciphertexts.
    """
    target = max(1.0, fraction * dim / MIN_BLOCKS)
    return int(min(CKKS_SLOTS, 2 ** math.floor(math.log2(target))))


class BlockK(SharedIndexCompressor):
    """Contiguous blocks from the public round seed: cheap gathers, aligned slots.

    ``block`` None sizes blocks from the dimension and the CKKS packing
    (:func:`block_size`). Blocks are taken without replacement
    (:func:`without_replacement`): the public seed shuffles all blocks once per pass, and
    round t takes the next ``take`` blocks of that stream of passes. Every block is then
    mixed once every ⌈blocks / take⌉ rounds (within one round of it). Drawn afresh each
    round, at 5% a block waited 20 rounds or more with probability 0.95^20 = 36%, and 60
    or more with 5%: drift that no mixing checked piled up on those blocks. Any one
    round's blocks are still a uniform draw, so every coordinate is in a round's index set
    with probability ``kept_fraction``, the figure the step-size analysis uses; given the
    pass so far, the blocks waiting longest are the ones drawn, which only helps it.
    """

    def __init__(self, fraction: float, seed: int, block: int | None = None) -> None:
        if block is not None and block < 1:
            raise UnknownCompressorError(f"block size must be positive, got {block}")
        self.fraction = fraction
        self.seed = seed
        self.block = block
        self.name = f"block-k:{fraction:g}" + ("" if block is None else f":{block}")

    def block_for(self, dim: int) -> int:
        return min(self.block or block_size(self.fraction, dim), dim)

    def _blocks(self, dim: int) -> tuple[int, int, int]:
        """(block length, blocks in all, blocks taken a round)."""
        block = self.block_for(dim)
        n_blocks = math.ceil(dim / block)
        take = max(1, min(n_blocks, round_half(keep_count(self.fraction, dim) / block)))
        return block, n_blocks, take

    def indices(self, dim: int, round: int) -> torch.Tensor:
        block, n_blocks, take = self._blocks(dim)
        chosen = without_replacement(self.seed, BLOCK_K_PASS_STREAM, n_blocks, take, round)
        idx = (chosen.unsqueeze(1) * block + torch.arange(block).unsqueeze(0)).reshape(-1)
        return idx[idx < dim]

    def kept_fraction(self, dim: int) -> float:
        _, n_blocks, take = self._blocks(dim)
        return take / n_blocks


class StackedIndex(SharedIndexCompressor):
    """A shared-index compressor over ``parts`` stacked length-d vectors (the model and
    gradient tracker of ``murmur-gt``): the same slots of each part, from one round seed."""

    def __init__(self, inner: SharedIndexCompressor, parts: int) -> None:
        self.inner = inner
        self.parts = parts
        self.name = inner.name

    def indices(self, dim: int, round: int) -> torch.Tensor:
        part = dim // self.parts
        base = self.inner.indices(part, round)
        return torch.cat([base + k * part for k in range(self.parts)])

    def kept_fraction(self, dim: int) -> float:
        return self.inner.kept_fraction(dim // self.parts)


class Stacked:
    """Any per-row compressor applied to each of ``parts`` stacked length-d vectors."""

    def __init__(self, inner: Compressor, parts: int) -> None:
        self.inner = inner
        self.parts = parts
        self.name = inner.name

    def compress(self, vectors: torch.Tensor, round: int) -> Sparse:
        x = _as_batch(vectors)
        part = x.shape[1] // self.parts
        pieces = [
            self.inner.compress(x[:, k * part : (k + 1) * part], round) for k in range(self.parts)
        ]
        if any(p.indices is None for p in pieces):
            return Sparse(x.clone(), None, x.shape[1], _kept(x.shape[0], x.shape[1], x.device))
        indices = torch.cat(
            [p.indices + k * part for k, p in enumerate(pieces) if p.indices is not None], -1
        )
        values = torch.cat([p.values for p in pieces], 1)
        real = torch.cat(
            [
                torch.arange(p.values.shape[1], device=x.device).unsqueeze(0) < p.kept.unsqueeze(1)
                for p in pieces
            ],
            1,
        )
        if not bool(real.all()) and indices.dim() == 2:
            # Rows padded to the largest k (top-k:adaptive): every part's kept entries
            # first, so that a row's first ``kept`` entries are what it sends.
            order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)
            values, indices = values.gather(1, order), indices.gather(1, order)
        kept = sum((p.kept for p in pieces), torch.zeros_like(pieces[0].kept))
        return Sparse(values, indices, x.shape[1], kept)

    def kept_fraction(self, dim: int) -> float:
        return self.inner.kept_fraction(dim // self.parts)


def stacked(compressor: Compressor, parts: int) -> Compressor:
    """``compressor`` for ``parts`` stacked vectors; 8-bit quantization stays outermost (one
    quantum a row), shared-index compressors stay shared-index (secure aggregation)."""
    if parts == 1 or isinstance(compressor, Identity):
        return compressor
    if isinstance(compressor, Quantized):
        return Quantized(stacked(compressor.inner, parts), compressor.seed, compressor.first_site)
    if isinstance(compressor, SharedIndexCompressor):
        return StackedIndex(compressor, parts)
    return Stacked(compressor, parts)


def shared_indices(compressor: Compressor, dim: int) -> Callable[[int], torch.Tensor] | None:
    """Round → index set of a shared-index compressor (8-bit or not), cached; None for
    compressors whose indices are sent. A receiver draws the sender's slots with it."""
    inner = compressor.inner if isinstance(compressor, Quantized) else compressor
    if not isinstance(inner, SharedIndexCompressor):
        return None

    @functools.lru_cache(maxsize=64)
    def indices(round: int) -> torch.Tensor:
        return inner.indices(dim, round)

    return indices


def round_half(value: float) -> int:
    return math.floor(value + 0.5)


def require_shared_slots(compressor: Compressor, secure: str) -> SharedIndexCompressor:
    """The compressor, if secure aggregation can use it; else a ConfigError saying why.

    Ciphertexts are summed slot by slot, so every contributor must fill the same slots:
    indices drawn from the public round seed (block-k, rand-k). Per-site indices (top-k)
    would not line up, and would tell the aggregator which coordinates moved most."""
    if not isinstance(compressor, SharedIndexCompressor):
        raise ConfigError(
            f"secure = {secure!r} needs compressor block-k:F or rand-k:F (slots from the "
            f"public round seed, the same at every contributor), not {compressor.name!r}"
        )
    return compressor
