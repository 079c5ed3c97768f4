"""Compressors by name: the specs users write (``top-k:0.1``, ``block-k:0.1:256+q8``) and
:func:`register_compressor` for new ones, as :mod:`node.gossip.compress` defines them.

A registered factory gets the arguments after the name, the whole spec (for errors),
the consortium's public seed (shared-index draws) and each site's label counts
(``top-k:adaptive``); ``+q8`` wraps any of them in 8-bit stochastic rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from murmur.registry import Registry
from node.errors import UnknownCompressorError
from node.gossip.compress import AdaptiveTopK, BlockK, Compressor, Identity, RandK, TopK
from node.gossip.quantize import Quantized


def _fraction(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UnknownCompressorError(f"bad compressor {spec!r}: {text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise UnknownCompressorError(
            f"bad compressor {spec!r}: the fraction must be in (0, 1], got {value:g}"
        )
    return value


LabelCounts = Sequence[Sequence[int]] | None
CompressorFactory = Callable[[list[str], str, int, LabelCounts], Compressor]
"""(arguments after the name, the whole spec, the public seed, each node's label counts)."""
COMPRESSORS: Registry[CompressorFactory] = Registry("compressor", UnknownCompressorError)


def register_compressor(name: str, factory: CompressorFactory, form: str | None = None) -> None:
    """Make ``name[:ARGS]`` (and ``name[:ARGS]+q8``) a compressor everywhere a spec is read."""
    COMPRESSORS.register(name, factory, form)


def _identity(args: list[str], spec: str, _seed: int, _labels: LabelCounts) -> Compressor:
    if args:
        raise UnknownCompressorError(f"bad compressor {spec!r}: identity takes no arguments")
    return Identity()


def _top_k(args: list[str], spec: str, _seed: int, labels: LabelCounts) -> Compressor:
    if args and args[0] == "adaptive":
        fraction = _fraction(args[1], spec) if len(args) > 1 else 0.1
        if labels is None:
            raise UnknownCompressorError("top-k:adaptive needs each node's label counts")
        return AdaptiveTopK(fraction, AdaptiveTopK.ratios_from_labels(fraction, labels))
    if len(args) != 1:
        raise UnknownCompressorError(f"bad compressor {spec!r}: expected top-k:F")
    return TopK(_fraction(args[0], spec))


def _rand_k(args: list[str], spec: str, seed: int, _labels: LabelCounts) -> Compressor:
    if len(args) != 1:
        raise UnknownCompressorError(f"bad compressor {spec!r}: expected rand-k:F")
    return RandK(_fraction(args[0], spec), seed)


def _block_k(args: list[str], spec: str, seed: int, _labels: LabelCounts) -> Compressor:
    if len(args) not in (1, 2):
        raise UnknownCompressorError(f"bad compressor {spec!r}: expected block-k:F[:BLOCK]")
    try:
        block = int(args[1]) if len(args) == 2 else None
    except ValueError:
        raise UnknownCompressorError(
            f"bad compressor {spec!r}: block size must be an integer"
        ) from None
    return BlockK(_fraction(args[0], spec), seed, block)


register_compressor("identity", _identity)
register_compressor("top-k", _top_k, "top-k:F, top-k:adaptive[:F]")
register_compressor("rand-k", _rand_k, "rand-k:F")
register_compressor("block-k", _block_k, "block-k:F[:BLOCK]")


def parse_compressor(
    spec: str, seed: int = 0, label_counts: LabelCounts = None, site: int = 0
) -> Compressor:
    """Build a compressor from its spec (``NAME[:ARGS][+q8]``, see :data:`COMPRESSORS`);
    ``label_counts`` (per node) feeds top-k:adaptive; ``site`` is the consortium index of
    the first row it compresses (a node's own index; 0 in the simulator), for +q8's
    per-site rounding."""
    base, plus, suffix = spec.partition("+")
    if plus and suffix != "q8":
        raise UnknownCompressorError(f"bad compressor {spec!r}: only '+q8' may follow a compressor")
    name, *args = base.split(":")
    inner = COMPRESSORS.get(name, spec)(args, spec, seed, label_counts)
    return Quantized(inner, seed, site) if plus else inner


def compressor_forms() -> str:
    """Every accepted spec form, for help texts."""
    return ", ".join(COMPRESSORS.forms()) + ", any of them +q8"
