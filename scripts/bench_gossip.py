"""Load reports to the coordinator: GossipSub vs persistent control streams, on real py-libp2p.

One region of ``--members`` hosts on loopback in one process (TCP, Noise, yamux, the
project's own adapters): host 0 is the coordinator; every other member sends a
``LoadReport`` (``mesh.control_wire``) ``--rate`` times a second for ``--seconds``, either

- **gossip**: published on the region's GossipSub topic (``mesh.gossip.Libp2pGossip``,
  configured as the nodes run it), which every member subscribes to because heartbeats
  travel there too; or
- **streams**: written on one persistent ``/p2c2r/control/1.0.0``-style stream per member
  to the coordinator, framed and decoded exactly as ``nodes.control`` does.

Reported per mode and rate: delivered fraction at the coordinator, latency p50/p99 (the
send time travels in the report's ``seq`` field: one process, one clock), and CPU time
(all hosts together, ``time.process_time``) per delivered report. The hosts share one
interpreter, so CPU per report is the whole region's cost of one report, and a core
saturates at 1000 ms/s of it.

    python scripts/bench_gossip.py                       # 8 members, 4 and 20 Hz, 8 s each
    python scripts/bench_gossip.py --members 12 --rate 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import trio

from mesh import control_wire as cw
from mesh.gossip import GossipConfig, Libp2pGossip, region_topic
from mesh.identity import Identity, peer_id_to_str
from mesh.libp2p_host import HostConfig, Libp2pHost, open_host

TOPIC = region_topic("bench")
PROTO = "/p2c2r/bench-load/1.0.0"


def _report(t_send: float) -> cw.LoadReport:
    # seq carries the send time in microseconds (same process, same clock)
    return cw.LoadReport(int(t_send * 1e6), 0.5, 3, (("echo", 4), ("upscale", 4)), (("echo", 12, 0.004),))


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


async def _run_mode(
    mode: str, hosts: list[Libp2pHost], gossips: list[Libp2pGossip], rate: float, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    sent = 0
    coord = hosts[0]

    if mode == "gossip":

        def handler(_origin: str, data: bytes) -> None:
            msg = cw.decode(data[4:])
            assert isinstance(msg, cw.LoadReport)
            latencies.append(time.monotonic() - msg.seq / 1e6)

        await gossips[0].subscribe(f"{TOPIC}/{rate}", lambda _d: None, handler)
        for g in gossips[1:]:
            # every member is on the region topic (heartbeats): it receives and forwards too
            await g.subscribe(f"{TOPIC}/{rate}", lambda _d: None, lambda _o, _d: None)
        await trio.sleep(3.0)  # mesh formation (GossipSub heartbeat 1 s)
    else:

        async def on_stream(stream: Any) -> None:
            decoder = cw.decoder()
            while True:
                data = await stream.read(65536)
                if not data:
                    return
                for body in decoder.feed(data):
                    msg = cw.decode(body)
                    assert isinstance(msg, cw.LoadReport)
                    latencies.append(time.monotonic() - msg.seq / 1e6)

        coord.set_stream_handler(PROTO, on_stream)
        streams = [await h.open_stream(coord.peer_id, PROTO) for h in hosts[1:]]

    cpu0, wall0 = time.process_time(), time.monotonic()
    async with trio.open_nursery() as nursery:

        async def member(i: int) -> None:
            nonlocal sent
            period = 1.0 / rate
            next_at = trio.current_time() + period * i / len(hosts)  # spread members out
            end = trio.current_time() + seconds
            while next_at < end:
                await trio.sleep_until(next_at)
                next_at += period
                frame = cw.encode(_report(time.monotonic()))
                sent += 1
                if mode == "gossip":
                    await gossips[i].publish(f"{TOPIC}/{rate}", frame)
                else:
                    await streams[i - 1].write(frame)

        for i in range(1, len(hosts)):
            nursery.start_soon(member, i)
    await trio.sleep(2.0)  # stragglers
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - wall0
    if mode == "streams":
        for s in streams:
            await s.reset()
    counters: dict[str, int] = {}
    for g in gossips:
        for k, v in g.counters().items():
            counters[k] = counters.get(k, 0) + v
    return {
        "counters": counters if mode == "gossip" else {},
        "mode": mode,
        "members": len(hosts),
        "rate_hz": rate,
        "sent": sent,
        "delivered": round(len(latencies) / sent, 4) if sent else 0.0,
        "p50_ms": round(_pct(latencies, 50) * 1000, 2),
        "p99_ms": round(_pct(latencies, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else float("nan"),
        "cpu_ms_per_report": round(cpu * 1000 / max(1, len(latencies)), 3),
        "cpu_share": round(cpu / wall, 3),
    }


async def _main(members: int, rates: list[float], seconds: float) -> list[dict[str, Any]]:
    from contextlib import AsyncExitStack

    results = []
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        hosts: list[Libp2pHost] = []
        gossips: list[Libp2pGossip] = []
        for _ in range(members):
            h = await stack.enter_async_context(
                open_host(Identity.generate(), HostConfig(listen=("/ip4/127.0.0.1/tcp/0",)))
            )
            g = Libp2pGossip(h.raw, GossipConfig())
            await nursery.start(g.run)  # before dialling: pubsub learns only of later peers
            hosts.append(h)
            gossips.append(g)
        # a region's links: everyone to everyone (the control plane links every member)
        for i, h in enumerate(hosts):
            for other in hosts[i + 1 :]:
                await h.connect(other.listen_addrs()[0])
        await trio.sleep(1.0)
        for rate in rates:
            for mode in ("streams", "gossip"):
                r = await _run_mode(mode, hosts, gossips, rate, seconds)
                print(
                    f"{r['mode']:8s} {r['members']:3d} members {r['rate_hz']:5.1f} Hz: "
                    f"delivered {r['delivered'] * 100:6.2f} %  p50 {r['p50_ms']:7.2f} ms  "
                    f"p99 {r['p99_ms']:8.2f} ms  CPU {r['cpu_ms_per_report']:6.2f} ms/report "
                    f"({r['cpu_share'] * 100:.0f} % of a core)",
                    flush=True,
                )
                if r["counters"]:
                    print(f"         gossip counters: {r['counters']}", flush=True)
                results.append(r)
        nursery.cancel_scope.cancel()
    _ = peer_id_to_str  # (kept importable for ad-hoc runs)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--rate", type=float, action="append", help="reports per second per member (repeatable)")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    results = trio.run(_main, args.members, args.rate or [4.0, 20.0], args.seconds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
