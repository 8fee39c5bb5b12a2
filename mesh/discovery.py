"""Discovery on py-libp2p: the Kademlia DHT with signed ``/p2c2r/`` records, and mDNS.

What the DHT is used for, and what it is not (see shared/notes/py-libp2p.md):

- **Peer routing** (``find_peer``) and **hints**: a node publishes a signed, versioned,
  expiring *node record* under ``/p2c2r/node/<peer id>`` (region, capacity per kind, CPU/GPU,
  addresses) and each coordinator a *region record* under ``/p2c2r/region/<name>``
  (coordinator, epoch, addresses, electorate). A joining node whose bootstrap peers cannot
  tell it where its region lives looks the region record up, dials the coordinator and
  learns the rest over the control protocol. Nothing read from the DHT is trusted before a
  live exchange: members prove liveness with signed heartbeats, coordinators with renews.
- **Not** provider records: 0.8.1 returns duplicates, answers from its local cache first,
  keeps a stopped provider for 48 h (no un-provide, no liveness), so "who serves region R"
  as provider records would be stale exactly when it matters (after a failover).
- **Value records with a validator that prefers the newest**: a put under a namespace with
  no selector keeps the *first* value on most nodes (0.8.1) and js peers do not store it at
  all, so every node registers ``RecordValidator`` for the ``p2c2r`` namespace. It checks
  the Ed25519 signature (node records by the key's peer id, region records by the named
  coordinator), the key/payload binding and expiry, and ``select`` keeps the highest
  ``(epoch, seq)``. Expiry uses wall-clock milliseconds because records cross machines (the
  only wall-clock use in the control plane; no timing logic depends on it).

Protocol id: we stay on the standard ``/ipfs/kad/1.0.0``. 0.8.1 ignores
``KadDHT(protocol_prefix=...)`` (the id is hard-coded in five modules), so a private id would
mean monkey-patching five modules' globals; the standard id keeps P2C2R nodes routable by
and for any libp2p peer (js-libp2p interop measured in the notes), our records stay apart
under their own namespace and validator, and a foreign peer can at worst serve us stale
hints, which we never trust without a live exchange anyway.

Routing table: 0.8.1 fills it only after DHT traffic, not on connect; ``bootstrap`` adds the
connected bootstrap peers explicitly and runs one lookup of our own id.

mDNS (``start_mdns``): py-libp2p's zeroconf-based discovery calls its handler on a zeroconf
thread; we hop back to trio with ``TrioToken.run_sync_soon`` and hand the address to the
control service, which dials and links like any bootstrap peer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio
from libp2p.peer.id import ID
from libp2p.records.pubkey import PublicKeyValidator
from libp2p.records.validator import NamespacedValidator, Validator

from mesh import control_wire as cw
from mesh.clock import wall_ms
from mesh.errors import ProtocolError, VerificationError

log = logging.getLogger("p2c2r.mesh.discovery")

NAMESPACE = "p2c2r"
NODE_PREFIX = f"/{NAMESPACE}/node/"
REGION_PREFIX = f"/{NAMESPACE}/region/"
RECORD_VERSION = 1
MAX_RECORD_BYTES = 4096


@dataclass(frozen=True, slots=True)
class NodeRecord:
    peer: str
    seq: int
    expires_ms: int
    region: str
    capacity: tuple[tuple[str, int], ...]
    cpus: int
    gpu: bool
    addrs: tuple[str, ...]

    def payload(self) -> bytes:
        out: bytes = msgpack.packb(
            [
                RECORD_VERSION,
                self.peer,
                self.seq,
                self.expires_ms,
                self.region,
                dict(self.capacity),
                self.cpus,
                self.gpu,
                list(self.addrs),
            ],
            use_bin_type=True,
        )
        return out

    @classmethod
    def from_payload(cls, data: bytes) -> NodeRecord:
        f = _load(data, 9)
        return cls(
            peer=cw._str(f[1], "peer", cw.MAX_PEER),
            seq=cw._int(f[2], "seq"),
            expires_ms=cw._int(f[3], "expiry"),
            region=cw._str(f[4], "region", cw.MAX_REGION),
            capacity=cw._caps(f[5]),
            cpus=cw._int(f[6], "cpus", 0, 1 << 16),
            gpu=bool(cw._bool(f[7], "gpu")),
            addrs=cw._strs(f[8], "addrs", cw.MAX_ADDRS, cw.MAX_ADDR),
        )


@dataclass(frozen=True, slots=True)
class RegionRecord:
    region: str
    coordinator: str
    epoch: int
    seq: int
    expires_ms: int
    addrs: tuple[str, ...]
    voters: tuple[str, ...]

    def payload(self) -> bytes:
        out: bytes = msgpack.packb(
            [
                RECORD_VERSION,
                self.region,
                self.coordinator,
                self.epoch,
                self.seq,
                self.expires_ms,
                list(self.addrs),
                list(self.voters),
            ],
            use_bin_type=True,
        )
        return out

    @classmethod
    def from_payload(cls, data: bytes) -> RegionRecord:
        f = _load(data, 8)
        return cls(
            region=cw._str(f[1], "region", cw.MAX_REGION),
            coordinator=cw._str(f[2], "coordinator", cw.MAX_PEER),
            epoch=cw._int(f[3], "epoch"),
            seq=cw._int(f[4], "seq"),
            expires_ms=cw._int(f[5], "expiry"),
            addrs=cw._strs(f[6], "addrs", cw.MAX_ADDRS, cw.MAX_ADDR),
            voters=cw._strs(f[7], "voters", cw.MAX_VOTERS, cw.MAX_PEER),
        )


def _load(data: bytes, n: int) -> list[Any]:
    if len(data) > MAX_RECORD_BYTES:
        raise ProtocolError("record too large")
    f = cw._fields(cw._unpack(data, MAX_RECORD_BYTES), n, "record")
    if isinstance(f[0], bool) or f[0] != RECORD_VERSION:
        raise ProtocolError(f"record version {f[0]!r} not supported")
    return f


def parse_record(key: str, value: bytes, *, now_ms: int | None = None) -> NodeRecord | RegionRecord:
    """Validate ``value`` stored under ``key``; raises ``ProtocolError``/``VerificationError``."""
    blob = cw.Signed.decode(value, MAX_RECORD_BYTES)
    rec: NodeRecord | RegionRecord
    if key.startswith(NODE_PREFIX):
        rec = NodeRecord.from_payload(blob.payload)
        if key[len(NODE_PREFIX) :] != rec.peer:
            raise ProtocolError("node record stored under another peer's key")
        cw.verify_blob(blob, cw.DOMAIN_NODE_RECORD, rec.peer)
    elif key.startswith(REGION_PREFIX):
        rec = RegionRecord.from_payload(blob.payload)
        if key[len(REGION_PREFIX) :] != rec.region:
            raise ProtocolError("region record stored under another region's key")
        cw.verify_blob(blob, cw.DOMAIN_REGION_RECORD, rec.coordinator)
    else:
        raise ProtocolError(f"unknown /{NAMESPACE}/ key {key!r}")
    if rec.expires_ms <= (now_ms if now_ms is not None else wall_ms()):
        raise ProtocolError("record expired")
    return rec


def _order(rec: NodeRecord | RegionRecord) -> tuple[int, int]:
    return (rec.epoch, rec.seq) if isinstance(rec, RegionRecord) else (0, rec.seq)


class RecordValidator(Validator):  # type: ignore[misc]
    """The ``/p2c2r/`` namespace validator: signed, bound to its key, unexpired; newest wins."""

    def validate(self, key: str, value: bytes) -> None:
        try:
            parse_record(key, value)
        except (ProtocolError, VerificationError) as exc:
            raise ValueError(f"invalid p2c2r record under {key}: {exc}") from exc

    def select(self, key: str, values: list[bytes]) -> int:
        best_i, best = 0, (-1, -1)
        for i, v in enumerate(values):
            try:
                order = _order(parse_record(key, v))
            except (ProtocolError, VerificationError):
                continue
            if order > best:
                best_i, best = i, order
        return best_i


def sign_record(sign: Callable[[bytes], bytes], rec: NodeRecord | RegionRecord) -> bytes:
    domain = cw.DOMAIN_NODE_RECORD if isinstance(rec, NodeRecord) else cw.DOMAIN_REGION_RECORD
    return cw.sign_blob(sign, domain, rec.payload()).encode()


@dataclass
class DhtConfig:
    query_timeout_s: float = 5.0
    record_ttl_s: float = 120.0


@dataclass
class Libp2pDiscovery:
    """The DHT (server mode) on a py-libp2p host; start with ``await nursery.start(d.run)``."""

    raw_host: Any
    sign: Callable[[bytes], bytes]
    config: DhtConfig = field(default_factory=DhtConfig)
    dht: Any = None
    _seq: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
        from libp2p.tools.anyio_service import background_trio_service

        validator = NamespacedValidator({"pk": PublicKeyValidator(), NAMESPACE: RecordValidator()})
        # Standard protocol id on purpose (see module docstring); protocol_prefix would be ignored.
        dht = KadDHT(self.raw_host, DHTMode.SERVER, validator=validator, validator_changed=True)
        async with background_trio_service(dht):
            self.dht = dht
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self.dht = None

    async def bootstrap(self, peers: Sequence[bytes]) -> int:
        """Seed the routing table with connected peers and look ourselves up; returns its size."""
        dht = self.dht
        if dht is None:
            return 0
        for p in peers:
            try:
                await dht.add_peer(ID(p), skip_server_mode_check=True)
            except Exception as exc:
                log.debug("cannot add %s to the routing table: %r", ID(p), exc)
        with trio.move_on_after(self.config.query_timeout_s):
            try:
                await dht.peer_routing.find_closest_peers_network(self.raw_host.get_id().to_bytes())
            except Exception as exc:
                log.debug("bootstrap lookup failed: %r", exc)
        size: int = dht.get_routing_table_size()
        return size

    def _next_seq(self) -> int:
        # Wall-clock ms: a restarted node's records must still win over its old ones.
        self._seq = max(self._seq + 1, wall_ms())
        return self._seq

    async def put_node(
        self, *, peer: str, region: str, capacity: dict[str, int], cpus: int, gpu: bool, addrs: Sequence[str]
    ) -> None:
        rec = NodeRecord(
            peer,
            self._next_seq(),
            wall_ms() + int(self.config.record_ttl_s * 1000),
            region,
            tuple(sorted(capacity.items()))[: cw.MAX_KINDS],
            cpus,
            gpu,
            tuple(addrs)[: cw.MAX_ADDRS],
        )
        await self._put(NODE_PREFIX + peer, sign_record(self.sign, rec))

    async def put_region(
        self, *, region: str, coordinator: str, epoch: int, addrs: Sequence[str], voters: Sequence[str]
    ) -> None:
        rec = RegionRecord(
            region,
            coordinator,
            epoch,
            self._next_seq(),
            wall_ms() + int(self.config.record_ttl_s * 1000),
            tuple(addrs)[: cw.MAX_ADDRS],
            tuple(voters)[: cw.MAX_VOTERS],
        )
        await self._put(REGION_PREFIX + region, sign_record(self.sign, rec))

    async def _put(self, key: str, value: bytes) -> None:
        dht = self.dht
        if dht is None:
            return
        with trio.move_on_after(self.config.query_timeout_s):
            try:
                await dht.put_value(key, value)
            except Exception as exc:  # a failed put is a missing hint, never a dead node
                log.debug("DHT put %s failed: %r", key, exc)

    async def get_region(self, region: str) -> RegionRecord | None:
        rec = await self._get(REGION_PREFIX + region)
        return rec if isinstance(rec, RegionRecord) else None

    async def get_node(self, peer: str) -> NodeRecord | None:
        rec = await self._get(NODE_PREFIX + peer)
        return rec if isinstance(rec, NodeRecord) else None

    async def _get(self, key: str) -> NodeRecord | RegionRecord | None:
        dht = self.dht
        if dht is None:
            return None
        value: bytes | None = None
        with trio.move_on_after(self.config.query_timeout_s):
            try:
                value = await dht.get_value(key)
            except Exception as exc:
                log.debug("DHT get %s failed: %r", key, exc)
        if value is None:
            return None
        try:
            return parse_record(key, value)
        except (ProtocolError, VerificationError):
            return None


def start_mdns(raw_host: Any, port: int, on_peer: Callable[[str], None]) -> Callable[[], None]:
    """Advertise this host on the LAN and call ``on_peer(multiaddr)`` (on the trio thread)
    for every peer found. Returns a function that stops it."""
    from libp2p.discovery.events.peerDiscovery import peerDiscovery
    from libp2p.discovery.mdns.mdns import MDNSDiscovery

    token = trio.lowlevel.current_trio_token()
    me = raw_host.get_id()

    def handler(info: Any) -> None:  # runs on a zeroconf thread
        if info.peer_id == me:
            return
        for a in info.addrs:
            addr = f"{a}/p2p/{info.peer_id.to_base58()}" if "/p2p/" not in str(a) else str(a)
            try:
                token.run_sync_soon(on_peer, addr)
            except trio.RunFinishedError:
                return

    peerDiscovery.register_peer_discovered_handler(handler)
    mdns = MDNSDiscovery(raw_host.get_network(), port=port, host=raw_host)
    mdns.start()

    def stop() -> None:
        peerDiscovery.unregister_peer_discovered_handler(handler)
        try:
            mdns.stop()
        except Exception as exc:
            log.debug("mDNS stop failed: %r", exc)

    return stop
