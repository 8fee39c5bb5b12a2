"""Node metrics in Prometheus format, served on a local HTTP endpoint.

Each node (worker or gamer) keeps one ``NodeMetrics``: task counts by kind and outcome,
latency histograms plus exact p50/p95/p99 over a sliding window per kind (exported as
gauges computed at scrape time), queue waits, bytes in and out, and verification
outcomes. ``serve_metrics`` is a small trio HTTP server for ``GET /metrics``: we do not
use py-libp2p's metrics server, which hunts for a free port from 8000 and hangs without
a consumer (see shared/notes), nor prometheus_client's thread server, which cannot be
stopped by cancellation.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("p2c2r.metrics")

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.033,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
QUANTILES = (0.5, 0.95, 0.99)


class _QuantileCollector(Collector):
    def __init__(self, owner: NodeMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterable[Metric]:
        fam = GaugeMetricFamily(
            "p2c2r_task_latency_quantile_seconds",
            "Task latency quantiles over the last samples per kind (exact, sliding window)",
            labels=["kind", "quantile"],
        )
        for kind, qs in sorted(self._owner.latency_quantiles().items()):
            for q, v in qs.items():
                fam.add_metric([kind, str(q)], v)
        yield fam


class NodeMetrics:
    """The metrics of one node. ``role`` is "worker" or "gamer"."""

    def __init__(self, role: str, window: int = 4096) -> None:
        self.role = role
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tasks = Counter(
            "p2c2r_tasks", "Tasks finished, by kind and outcome", ["kind", "outcome"], registry=r
        )
        self.latency = Histogram(
            "p2c2r_task_latency_seconds",
            "Task latency by kind",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "p2c2r_queue_wait_seconds",
            "Time a task waited for a kernel slot",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.bytes = Counter("p2c2r_payload_bytes", "Payload bytes by direction", ["direction"], registry=r)
        self.verification = Counter(
            "p2c2r_verifications", "Result verification outcomes", ["outcome"], registry=r
        )
        # Label children resolved once: these are touched for every task.
        self.bytes_in = self.bytes.labels("in")
        self.bytes_out = self.bytes.labels("out")
        self.signature_ok = self.verification.labels("signature_ok")
        self._task_children: dict[tuple[str, str], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self.in_flight = Gauge("p2c2r_tasks_in_flight", "Tasks queued or running", registry=r)
        self.protocol_errors = Counter("p2c2r_protocol_errors", "Frames or messages refused", registry=r)
        self.queue_notices = Counter(
            "p2c2r_queue_notices",
            'Tasks announced as waiting for a kernel slot ("Q" frames): sent (worker), received (gamer)',
            ["direction"],
            registry=r,
        )
        self.queue_notices_sent = self.queue_notices.labels("sent")
        self.queue_notices_received = self.queue_notices.labels("received")
        # SDK optimisations (gamer) and batch receipts (both sides).
        self.cache = Counter(
            "p2c2r_result_cache",
            "Result-cache lookups of deterministic kinds: hit (re-verified and served), "
            "miss, refused (the stored receipt no longer verifies or its worker is banned)",
            ["outcome"],
            registry=r,
        )
        self.cache_hit = self.cache.labels("hit")
        self.cache_miss = self.cache.labels("miss")
        self.cache_refused = self.cache.labels("refused")
        self.hedges = Counter(
            "p2c2r_hedges",
            "Hedged copies: sent, won (the hedge answered first), denied (over the hedge budget)",
            ["outcome"],
            registry=r,
        )
        self.hedge_sent = self.hedges.labels("sent")
        self.hedge_won = self.hedges.labels("won")
        self.hedge_denied = self.hedges.labels("denied")
        self.batch_frames = Counter(
            "p2c2r_batch_signature_frames",
            'Result frames under one Merkle-root signature ("S"): signed (worker), '
            "verified or rejected (gamer)",
            ["outcome"],
            registry=r,
        )
        self.batch_results = Counter(
            "p2c2r_batch_signature_results",
            "Results covered by those frames, by the same outcomes",
            ["outcome"],
            registry=r,
        )
        self._window = window
        self._samples: dict[str, deque[float]] = {}
        r.register(_QuantileCollector(self))

    def observe_task(self, kind: str, outcome: str, latency_s: float | None) -> None:
        counter = self._task_children.get((kind, outcome))
        if counter is None:
            counter = self._task_children[(kind, outcome)] = self.tasks.labels(kind, outcome)
        counter.inc()
        if latency_s is not None and outcome == "ok":
            hist = self._latency_children.get(kind)
            if hist is None:
                hist = self._latency_children[kind] = self.latency.labels(kind)
            hist.observe(latency_s)
            dq = self._samples.get(kind)
            if dq is None:
                dq = self._samples[kind] = deque(maxlen=self._window)
            dq.append(latency_s)

    def latency_quantiles(self) -> dict[str, dict[float, float]]:
        out: dict[str, dict[float, float]] = {}
        for kind, dq in self._samples.items():
            if dq:
                arr = np.fromiter(dq, dtype=float)
                out[kind] = {q: float(np.quantile(arr, q)) for q in QUANTILES}
        return out

    def counts(self) -> dict[tuple[str, str], float]:
        """(kind, outcome) -> count, read back from the Prometheus counters."""
        out: dict[tuple[str, str], float] = {}
        for metric in self.tasks.collect():
            for s in metric.samples:
                if s.name.endswith("_total"):
                    out[(s.labels["kind"], s.labels["outcome"])] = s.value
        return out

    def observe_batch(self, outcome: str, results: int) -> None:
        """One batch-signature frame covering ``results`` results (signed, verified, rejected)."""
        self.batch_frames.labels(outcome).inc()
        self.batch_results.labels(outcome).inc(results)

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data


def parse_prometheus(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """Parse exposition text into (name, labels, value); enough for our own benchmarks."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            yield s.name, dict(s.labels), float(s.value)


async def serve_metrics(
    metrics: NodeMetrics,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` until cancelled; reports the bound port through ``task_status``."""

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(5):
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 8192:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    request += chunk
                line = request.split(b"\r\n", 1)[0].decode(errors="replace")
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] in ("/metrics", "/"):
                    body = metrics.render()
                    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                else:
                    body = b"not found: try GET /metrics\n"
                    head = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                await stream.send_all(
                    head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("metrics request failed: %r", exc)
        finally:
            await stream.aclose()

    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    task_status.started(bound)
    await trio.serve_listeners(handle, listeners)


async def fetch_metrics(host: str, port: int, timeout_s: float = 5.0) -> str:
    """GET /metrics from a node (used by benchmarks and ``p2c2r status``)."""
    with trio.fail_after(timeout_s):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        status = head.split(b"\r\n")[0]
        raise OSError(f"metrics endpoint answered {status!r}")
    return body.decode()
