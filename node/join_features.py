"""The consortium's feature statistics, computed at join without any site's own moments.

With ``[data] join_features = true`` a site's node, before its first round, takes part in
one session with every member: each site masks its column moments (count, Σx, Σx² per
numeric column; :mod:`node.training.features`) with pairwise masks
(:mod:`crypto.pairmask`), signs the masked vector with its site key and floods it to its
neighbours, who pass on what they have not seen. Once a site holds every member's
masked vector, it adds them: the masks cancel and the exact totals remain, from which
every site derives the same :class:`~node.training.features.Featurizer` and writes it to
its state directory (``features.json``); later starts read that file.

What a member learns: the consortium's totals, and of each site only its masked vector
(which hides its moments unless every other member colludes), plus the category values
and class labels it holds, which one-hot encoding needs by name (not their counts).
Every member must take part (masks cancel only in the full sum): the session waits for
all of them, at most ``timeout_s``, then names the missing ones. A site's own masked
vector is written (0600) before it first leaves, and a restart resends exactly it: a
second, different vector in the same session would reveal the difference.

Everything received is checked before it is kept: the frame's signature and membership
(:class:`node.wire.frames.FrameGuard`), the origin's own signature over the item (a relay
cannot alter it), and its shape against ours; a bad item is counted and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import msgpack
import numpy as np

from crypto import pairmask
from crypto.errors import BadSignatureError, CryptoError
from crypto.identity import SiteIdentity, public_key_from_peer_id, verify
from crypto.keyfile import read_secret, write_secret
from murmur import bounded_msgpack
from node.config import NodeConfig
from node.errors import ConfigError, FrameError, MalformedFrameError, TransportError
from node.state.membership import Membership
from node.training import features
from node.training.features import Featurizer, Moments
from node.transport.base import Transport
from node.wire.frames import FrameGuard, seal

TOPIC = "moments"
ITEM_FILE = "features.item"
FEATURES_FILE = "features.json"
RESEND_S = 0.5
MAX_RECORDS = 2.0**40  # more rows than any consortium holds: a sum past it is noise
JOIN_TIMEOUT_S = 300.0  # every member must be up within this of each other
LINGER_S = 10.0  # after holding every item: how long to help neighbours still missing some
_DOMAIN = b"murmur-moments-item/1"


def session_label(config: NodeConfig) -> bytes:
    """Public and the same at every site: the consortium, its members and the label column."""
    text = json.dumps(
        [config.consortium.seed, sorted(config.consortium.members), config.data.target]
    )
    return hashlib.blake2b(text.encode(), digest_size=32, person=b"murmur-features").digest()


@dataclass(frozen=True)
class Item:
    """One site's signed masked moments and the names it holds."""

    origin: str
    numeric: tuple[str, ...]
    masked: bytes
    categories: dict[str, tuple[str, ...]]
    classes: tuple[str, ...]
    sig: bytes

    def signed(self, session: bytes) -> bytes:
        """What the origin signs: the item bound to this session (an item of another
        consortium or label column cannot be replayed into this one)."""
        body = [
            _DOMAIN,
            session,
            self.origin,
            list(self.numeric),
            self.masked,
            {c: list(v) for c, v in sorted(self.categories.items())},
            list(self.classes),
        ]
        out: bytes = msgpack.packb(body)
        return out

    def pack(self) -> bytes:
        out: bytes = msgpack.packb(
            {
                "origin": self.origin,
                "numeric": list(self.numeric),
                "masked": self.masked,
                "categories": {c: list(v) for c, v in self.categories.items()},
                "classes": list(self.classes),
                "sig": self.sig,
            }
        )
        return out

    @classmethod
    def unpack(cls, data: bytes) -> Item:
        raw = bounded_msgpack.unpack(
            data, MalformedFrameError, "moments item", max_array_len=1 << 16, max_map_len=4096
        )
        if not isinstance(raw, dict):
            raise MalformedFrameError("moments item is not a map")
        try:
            origin, numeric, masked = raw["origin"], raw["numeric"], raw["masked"]
            categories, classes, sig = raw["categories"], raw["classes"], raw["sig"]
        except KeyError as exc:
            raise MalformedFrameError(f"moments item lacks {exc}") from None
        names_ok = isinstance(numeric, list) and isinstance(classes, list)
        if not (
            isinstance(origin, str)
            and isinstance(masked, bytes)
            and isinstance(sig, bytes)
            and isinstance(categories, dict)
            and names_ok
            and all(isinstance(v, list) for v in categories.values())
        ):
            raise MalformedFrameError("moments item has a field of the wrong type")
        item = cls(
            origin,
            tuple(map(str, numeric)),
            masked,
            {str(c): tuple(map(str, v)) for c, v in categories.items()},
            tuple(map(str, classes)),
            sig,
        )
        return item


def own_item(identity: SiteIdentity, config: NodeConfig, moments: Moments) -> Item:
    """This site's item for the session: the one written before, or a new one."""
    path = config.site.state_dir / ITEM_FILE
    if path.exists():
        item = Item.unpack(read_secret(path))
        if item.origin != identity.peer_id:
            raise ConfigError(f"{path} is another site's moments item; move it away")
        return item
    values = np.concatenate([moments.count, moments.total, moments.squares]).tolist()
    members = config.consortium.members
    words = pairmask.masked(identity, members, session_label(config), values)
    unsigned = Item(
        identity.peer_id,
        moments.numeric,
        pairmask.to_bytes(words),
        moments.categories,
        moments.classes,
        b"",
    )
    signature = identity.sign(unsigned.signed(session_label(config)))
    item = replace(unsigned, sig=signature)
    config.site.state_dir.mkdir(parents=True, exist_ok=True)
    write_secret(path, item.pack(), what="moments item")
    return item


def check_item(item: Item, ours: Item, members: list[str], session: bytes) -> None:
    """Refuse an item that is not a member's own for this session, as it signed it, of
    our table's shape."""
    if item.origin not in members:
        raise MalformedFrameError(f"moments item from {item.origin}, not a member")
    try:
        verify(public_key_from_peer_id(item.origin), item.signed(session), item.sig)
    except BadSignatureError:
        raise MalformedFrameError(f"moments item of {item.origin}: bad signature") from None
    if item.numeric != ours.numeric or item.categories.keys() != ours.categories.keys():
        raise MalformedFrameError(f"moments item of {item.origin}: other columns than ours")
    if len(item.masked) != len(ours.masked):
        raise MalformedFrameError(f"moments item of {item.origin}: wrong length")


def featurizer_of(items: list[Item]) -> Featurizer:
    """The consortium's encoding from every member's item (masks cancel in the sum)."""
    try:
        totals = np.asarray(pairmask.unmasked_total([pairmask.from_bytes(i.masked) for i in items]))
    except CryptoError as exc:
        raise ConfigError(f"feature moments: {exc}") from None
    width = len(items[0].numeric)
    zeros = np.zeros(width)
    # The names (categories, classes) are united as Moments add them; the sums are ours.
    names = features.total(
        Moments(i.numeric, zeros, zeros, zeros, i.categories, i.classes) for i in items
    )
    count, total, squares = totals[:width], totals[width : 2 * width], totals[2 * width :]
    # A member whose vector was not masked for this session leaves noise the size of the
    # modulus (|value| ~ 2^103): no count of records is near that, or negative.
    safe = np.maximum(count, 1.0)
    implausible = (
        (count < 0).any()
        or (count > MAX_RECORDS).any()
        or (np.abs(count - np.round(count)) > 1e-3).any()
        or (squares < 0).any()
        or (squares / safe - (total / safe) ** 2 < -1e-6 * (1 + squares / safe)).any()
    )
    if implausible:
        raise ConfigError(
            "feature moments: the masked sum is not a sum of moments (a member's masked "
            "vector was not made for this session or was tampered with); nothing is used"
        )
    return Featurizer.from_moments(replace(names, count=count, total=total, squares=squares))


async def join_features(
    config: NodeConfig,
    identity: SiteIdentity,
    transport: Transport,
    moments: Moments,
    timeout_s: float = JOIN_TIMEOUT_S,
) -> tuple[Featurizer, Counter[str]]:
    """Run the session on a started ``transport``; returns the encoding and the refusals
    counted. Writes ``features.json`` to the state directory."""
    me, members = identity.peer_id, list(config.consortium.members)
    neighbours = [p for p in Membership.of(config).weights(me) if p != me]
    ours, session = own_item(identity, config, moments), session_label(config)
    held: dict[str, Item] = {me: ours}
    has: dict[str, set[str]] = {p: set() for p in neighbours}  # what each neighbour holds
    rejected: Counter[str] = Counter()
    guard = FrameGuard(members, max_per_round=1 << 20)
    arrived = asyncio.Event()

    async def receive() -> None:
        async for received in transport.incoming():
            try:
                frame = guard.admit(received.body, received.peer)
                if frame.topic != TOPIC:
                    continue  # a neighbour already past join; its frames are resent later
                raw = bounded_msgpack.unpack(
                    frame.payload, MalformedFrameError, "moments frame", max_array_len=4096
                )
                if not isinstance(raw, dict) or not isinstance(raw.get("have"), list):
                    raise MalformedFrameError("moments frame needs have and item")
                if received.peer in has:
                    has[received.peer] = {str(p) for p in raw["have"]} & set(members)
                if raw.get("item") is not None:
                    if not isinstance(raw["item"], bytes):
                        raise MalformedFrameError("moments frame: item is not bytes")
                    item = Item.unpack(raw["item"])
                    check_item(item, ours, members, session)
                    held.setdefault(item.origin, item)
            except FrameError as exc:
                rejected[exc.reason] += 1
                continue
            arrived.set()

    async def send_round() -> None:
        have = sorted(held)
        for peer in neighbours:
            missing: list[Item | None] = [held[o] for o in have if o not in has[peer]]
            for item in missing or [None]:
                body = {"have": have, "item": None if item is None else item.pack()}
                with contextlib.suppress(TransportError):  # not up yet: the next resend
                    await transport.send(peer, seal(identity, 0, TOPIC, msgpack.packb(body)))

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    task = asyncio.create_task(receive())
    try:
        while not (len(held) == len(members) and all(len(h) == len(members) for h in has.values())):
            if len(held) == len(members):  # complete: wait a little for neighbours to say so
                end = min(end, loop.time() + LINGER_S)
            if loop.time() > end:
                if len(held) < len(members):
                    missing = sorted(set(members) - set(held))
                    raise ConfigError(
                        f"feature moments: no masked moments from {missing} within "
                        f"{timeout_s:g} s; every member must join (masks cancel only in the "
                        "full sum)"
                    )
                break  # we have everything; a neighbour that has not said so will ask again
            await send_round()
            arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), RESEND_S)
        await send_round()  # our final "have" tells neighbours we are done
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    featurizer = featurizer_of([held[m] for m in members])
    path = config.site.state_dir / FEATURES_FILE
    featurizer.save(path)
    return featurizer, rejected


async def joined(
    config: NodeConfig,
    identity: SiteIdentity,
    transport: Transport,
    timeout_s: float = JOIN_TIMEOUT_S,
) -> NodeConfig:
    """``config`` with ``[data] features`` set: computed in a session when
    ``join_features`` asks for it and no earlier start wrote it; else unchanged. Starts
    ``transport`` (the node then uses it, started)."""
    if not config.data.join_features:
        return config
    path = config.site.state_dir / FEATURES_FILE
    if not path.exists():
        from node.training.data import csv_moments

        source = Path(config.data.source.partition(":")[2])
        moments = csv_moments(source, config.data.target)
        await transport.start()
        me = identity.peer_id
        book = config.consortium.peers
        transport.set_peers({p: book[p] for p in Membership.of(config).weights(me) if p != me})
        _, rejected = await join_features(config, identity, transport, moments, timeout_s)
        if rejected:
            print(f"murmur: feature moments: refused {dict(rejected)}", file=sys.stderr)
    return config.edit(data={"features": path, "join_features": False})
