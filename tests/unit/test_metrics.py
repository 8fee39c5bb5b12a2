"""Node metrics: counts, exact quantiles, and the /metrics endpoint over loopback."""

from __future__ import annotations

import trio

from nodes.metrics import NodeMetrics, fetch_metrics, parse_prometheus, serve_metrics


def test_counts_and_quantiles() -> None:
    m = NodeMetrics("worker")
    for i in range(1, 101):
        m.observe_task("echo", "ok", i / 1000)
    m.observe_task("echo", "failed", None)
    m.observe_task("upscale", "timeout", 3.0)
    assert m.counts() == {("echo", "ok"): 100, ("echo", "failed"): 1, ("upscale", "timeout"): 1}
    q = m.latency_quantiles()["echo"]
    assert abs(q[0.5] - 0.0505) < 1e-9
    assert abs(q[0.99] - 0.09901) < 1e-6
    assert "upscale" not in m.latency_quantiles()  # failures do not pollute latency


def test_window_is_bounded() -> None:
    m = NodeMetrics("gamer", window=10)
    for i in range(1000):
        m.observe_task("echo", "ok", float(i))
    assert m.latency_quantiles()["echo"][0.5] == 994.5


async def test_endpoint_serves_prometheus_text() -> None:
    m = NodeMetrics("worker")
    m.observe_task("echo", "ok", 0.002)
    m.bytes.labels("in").inc(123)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, m, "127.0.0.1", 0)
        text = await fetch_metrics("127.0.0.1", port)
        nursery.cancel_scope.cancel()
    samples = {(n, tuple(sorted(lbl.items()))): v for n, lbl, v in parse_prometheus(text)}
    assert samples[("p2c2r_tasks_total", (("kind", "echo"), ("outcome", "ok")))] == 1
    assert samples[("p2c2r_payload_bytes_total", (("direction", "in"),))] == 123
    assert samples[("p2c2r_task_latency_quantile_seconds", (("kind", "echo"), ("quantile", "0.5")))] == 0.002


async def test_endpoint_404_for_other_paths() -> None:
    m = NodeMetrics("worker")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, m, "127.0.0.1", 0)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /nope HTTP/1.1\r\n\r\n")
            data = b""
            while chunk := await stream.receive_some(4096):
                data += chunk
        nursery.cancel_scope.cancel()
    assert data.startswith(b"HTTP/1.1 404")


def test_sdk_and_batch_counters_read_back_from_the_exposition_text() -> None:
    m = NodeMetrics("gamer")
    m.cache_hit.inc(3)
    m.cache_miss.inc()
    m.hedge_sent.inc(2)
    m.hedge_won.inc()
    m.hedge_denied.inc(5)
    m.observe_batch("verified", 16)
    m.observe_batch("verified", 4)
    m.observe_batch("rejected", 8)
    got = {
        (n, lab.get("outcome")): v
        for n, lab, v in parse_prometheus(m.render().decode())
        if n.endswith("_total")
    }
    assert got[("p2c2r_result_cache_total", "hit")] == 3 and got[("p2c2r_result_cache_total", "miss")] == 1
    assert got[("p2c2r_result_cache_total", "refused")] == 0
    assert got[("p2c2r_hedges_total", "sent")] == 2 and got[("p2c2r_hedges_total", "won")] == 1
    assert got[("p2c2r_hedges_total", "denied")] == 5
    assert got[("p2c2r_batch_signature_frames_total", "verified")] == 2
    assert got[("p2c2r_batch_signature_results_total", "verified")] == 20
    assert got[("p2c2r_batch_signature_frames_total", "rejected")] == 1
    assert got[("p2c2r_batch_signature_results_total", "rejected")] == 8
