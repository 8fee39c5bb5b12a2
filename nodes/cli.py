"""The ``p2c2r`` command line: the only place that reads flags, files and the environment.

p2c2r id [--key-file F]
p2c2r node run [--listen MULTIADDR] [--key-file F] [--peer MULTIADDR ...] [--config node.toml]
               [--bootstrap MULTIADDR ...] [--region NAME] [--voter PEERID ...] [--mdns]
p2c2r status [--peer MULTIADDR] [--json]
p2c2r submit KIND [--peer MULTIADDR] [--param k=v ...] [--input FILE] [--output FILE]
p2c2r demo [--workers N] [--tasks M] [--regions eu,us] [--direct] [--json PATH]
p2c2r demo --fps 30 [--seconds S] [--workers N] [--json PATH]
p2c2r kinds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from mesh.errors import ConfigError, P2C2RError

if TYPE_CHECKING:
    from mesh.control_wire import ElectionView
    from nodes.worker import Worker

log = logging.getLogger("p2c2r.cli")

ENV_PEER = "P2C2R_PEER"
ENV_EXIT_WITH_PARENT = "P2C2R_EXIT_WITH_PARENT"
#: What ``p2c2r node run --warmup`` prints once its kernels are warm.
WARM_LINE = "kernels warm"


def _home() -> Path:
    return Path(os.environ.get("P2C2R_HOME", "~/.p2c2r")).expanduser()


def _setup_logging(level: str) -> None:
    from rich.logging import RichHandler

    lvl = getattr(logging, level.upper(), None)
    if not isinstance(lvl, int):
        raise ConfigError(f"unknown log level {level!r} (use debug, info, warning or error)")
    handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
    logging.basicConfig(level=lvl, format="%(message)s", handlers=[handler], force=True)


def _parse_param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"--param {text!r}: expected KEY=VALUE, e.g. --param scale=2")
    key, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


# ---------------------------------------------------------------- id


def cmd_id(args: argparse.Namespace) -> int:
    from mesh.identity import load_or_create

    ident = load_or_create(args.key_file or _home() / "node.key")
    print(ident.peer_id.to_base58())
    return 0


# ---------------------------------------------------------------- node run


def _load_toml(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def _node_config(args: argparse.Namespace) -> Any:
    from mesh.libp2p_host import HostConfig
    from nodes.node import NodeConfig
    from nodes.worker import WorkerConfig

    conf = _load_toml(args.config)
    node_t = conf.get("node", {})
    worker_t = conf.get("worker", {})
    known_node = {"listen", "key_file", "peers", "bootstrap", "region", "voters", "mdns"}
    known_worker = {
        "concurrency",
        "batch_concurrency",
        "batch_nice",
        "executor",
        "max_queued",
        "max_frame_mib",
        "warmup",
        "batch_sign",
        "shm",
    }
    for table, known, name in ((node_t, known_node, "node"), (worker_t, known_worker, "worker")):
        extra = sorted(set(table) - known)
        if extra:
            raise ConfigError(
                f"unknown key(s) in [{name}]: {', '.join(extra)} (known: {', '.join(sorted(known))})"
            )
    listen = args.listen or node_t.get("listen") or ["/ip4/0.0.0.0/tcp/4001"]
    if isinstance(listen, str):
        listen = [listen]
    key_file = Path(args.key_file or node_t.get("key_file") or _home() / "node.key").expanduser()
    peers = tuple(args.peer or node_t.get("peers", []))
    wc = WorkerConfig()
    if "concurrency" in worker_t or args.concurrency:
        wc = replace(wc, concurrency=int(args.concurrency or worker_t["concurrency"]))
    executor = args.executor or worker_t.get("executor")
    if executor:
        if executor not in ("thread", "process"):
            raise ConfigError(f"executor must be 'thread' or 'process', got {executor!r}")
        wc = replace(wc, executor=executor)
    if args.warmup or worker_t.get("warmup"):
        wc = replace(wc, warmup=True)
    for key, low in (("max_queued", 1), ("batch_concurrency", 0), ("batch_nice", 0)):
        if key in worker_t:
            value = worker_t[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"[worker] {key} must be an integer of at least {low}, got {value!r}")
            wc = replace(wc, **{key: worker_t[key]})
    for flag in ("batch_sign", "shm"):
        if flag in worker_t:
            if not isinstance(worker_t[flag], bool):
                raise ConfigError(f"[worker] {flag} must be true or false")
            wc = replace(wc, **{flag: worker_t[flag]})
    if args.no_shm:
        wc = replace(wc, shm=False)
    max_frame_mib = args.max_frame_mib or worker_t.get("max_frame_mib")
    if max_frame_mib:
        wc = replace(wc, max_frame=int(float(max_frame_mib) * 1024 * 1024))
    from nodes.control import ControlConfig

    bootstrap = tuple(args.bootstrap or node_t.get("bootstrap", []))
    voters = tuple(args.voter or node_t.get("voters", []))
    from mesh.identity import peer_id_from_str

    for v in voters:
        peer_id_from_str(v)  # a typo in a voter id is a config error, not a silent dead region
    control = ControlConfig(region=args.region or node_t.get("region"), voters=voters, bootstrap=bootstrap)
    return NodeConfig(
        key_file=key_file,
        host=HostConfig(listen=tuple(listen)),
        worker=wc,
        peers=peers,
        control=control,
        mdns=bool(args.mdns or node_t.get("mdns", False)),
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
    )


async def _run_node(args: argparse.Namespace) -> None:
    from rich.console import Console

    from nodes.node import open_node

    config = _node_config(args)
    # Kernels run `concurrency` at a time; give each its share of the cores so torch's and
    # OpenMP's own thread pools do not oversubscribe them (read when torch is imported).
    share = max(1, (os.cpu_count() or 1) // max(1, config.worker.concurrency))
    os.environ.setdefault("OMP_NUM_THREADS", str(share))
    console = Console(stderr=False, highlight=False)
    async with open_node(config) as node:
        if getattr(args, "misbehave", None):  # hidden, test-only (adversarial e2e)
            from nodes.misbehave import install

            install(node.worker, args.misbehave)
        addrs = node.dialable_addrs()
        w = config.worker
        console.print(f"[bold]p2c2r node[/bold] {node.peer_id}")
        console.print(f"  key file     {config.key_file}")
        console.print(f"  kinds        {', '.join(node.registry.names())}")
        console.print(
            f"  executor     {w.executor} x {w.concurrency} + batch x {w.batch_slots}"
            f" (nice +{w.batch_nice}), max frame {w.max_frame // (1024 * 1024)} MiB"
        )
        console.print("  security     Noise (plaintext refused), yamux, protocol /p2c2r/task/1.0.0")
        cc = config.control
        console.print(
            f"  mesh         region {cc.region or 'auto'}, "
            f"{len(cc.bootstrap)} bootstrap peer(s), "
            f"electorate {'configured (' + str(len(cc.voters)) + ')' if cc.voters else 'learned'}"
            f"{', mDNS' if config.mdns else ''}"
        )
        if node.metrics_port is not None:
            console.print(f"  metrics      http://127.0.0.1:{node.metrics_port}/metrics")
        for a in addrs:
            print(f"listening on {a}", flush=True)
        state = _home()
        try:
            state.mkdir(parents=True, exist_ok=True)
            (state / "last-node.addr").write_text(addrs[0] + "\n")
        except OSError:
            pass  # the address file is a convenience for `p2c2r submit`, never required
        async with trio.open_nursery() as waiters:
            if os.environ.get(ENV_EXIT_WITH_PARENT):
                waiters.start_soon(_exit_with_parent, waiters.cancel_scope, console)
            if w.warmup:
                waiters.start_soon(_say_when_warm, node.worker)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for sig in signals:
                    console.print(f"stopping ({signal.Signals(sig).name}) ...")
                    break
            waiters.cancel_scope.cancel()
        s = node.worker.stats
        console.print(
            f"stopped: {s.completed} tasks served, {s.failed} failed, {s.protocol_errors} protocol errors"
        )


async def _say_when_warm(worker: Worker) -> None:
    """With ``--warmup``: one line once every kernel has run once (``p2c2r demo`` waits for
    it, so that its first tasks do not queue behind torch's import)."""
    t0 = trio.current_time()
    await worker.warm.wait()
    print(f"{WARM_LINE} in {trio.current_time() - t0:.1f} s", flush=True)


def cmd_status(args: argparse.Namespace) -> int:
    return trio.run(_status, args)


async def _status(args: argparse.Namespace) -> int:
    from nodes.mesh_client import fetch_status

    peer = args.peer or _default_peer()
    if not peer:
        raise ConfigError(
            f"no node to ask: pass --peer MULTIADDR (printed by `p2c2r node run`) or set {ENV_PEER}"
        )
    snap = await fetch_status(peer, timeout=args.timeout)
    if args.json:
        print(json.dumps(_snapshot_json(snap), indent=2))
    else:
        _print_status(snap)
    return 0


def _snapshot_json(snap: Any) -> dict[str, Any]:
    def coord(c: Any) -> list[float] | None:
        return None if c is None else [c.x, c.y, c.height]

    return {
        "peer": snap.peer,
        "region": snap.region,
        "role": snap.role,
        "version": snap.version,
        "addrs": list(snap.addrs),
        "coord": coord(snap.coord),
        "counters": dict(snap.counters),
        "election": None if snap.election is None else dataclasses.asdict(snap.election),
        "regions": [
            {
                "region": r.region,
                "coordinator": r.coordinator,
                "epoch": r.epoch,
                "voters": list(r.voters),
                "coordinator_addrs": list(r.coordinator_addrs),
                "free": dict(r.free),
                "centroid": coord(r.centroid),
                "age_s": round(r.age_s, 3),
                "members": [
                    {
                        "peer": m.peer,
                        "state": m.state,
                        "load": m.load,
                        "queue": m.queue_depth,
                        "capacity": dict(m.capacity),
                        "rtt_ms": None if m.rtt_s is None else round(m.rtt_s * 1000, 3),
                        "coord": coord(m.coord),
                        "addrs": list(m.addrs),
                        "version": m.version,
                    }
                    for m in r.members
                ],
            }
            for r in snap.regions
        ],
    }


def election_line(e: ElectionView | None) -> str:
    """One line on a member's election state (``Snapshot.election``), for ``p2c2r status``
    and the demo's report when a region elects nobody."""
    if e is None:
        return "no electorate known yet"
    out = f"{e.state}, term {e.term}, voted in epoch {e.voted_epoch}"
    if e.failed_claims:
        out += f", {e.failed_claims} claim(s) in a row unanswered (backing off)"
    if e.next_claim_s is not None:
        out += f", claims in {e.next_claim_s:.1f} s unless a coordinator renews"
    return out + f"; control links to {e.voters_linked} of {e.voters} other voter(s)"


def _print_status(snap: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{snap.peer}[/bold]  region {snap.region or '-'}  role {snap.role}  v{snap.version}")
    console.print(f"election: {election_line(snap.election)}")
    regions = Table(title="regions")
    for col in ("region", "coordinator", "epoch", "members", "free slots", "voters", "age"):
        regions.add_column(col)
    for r in snap.regions:
        regions.add_row(
            r.region,
            r.coordinator or "(none)",
            str(r.epoch),
            str(len(r.members)),
            ", ".join(f"{k}={n}" for k, n in r.free) or "-",
            str(len(r.voters)),
            f"{r.age_s:.1f}s",
        )
    console.print(regions)
    members = Table(title="members")
    for col in ("region", "peer", "state", "load", "queue", "est. RTT", "role"):
        members.add_column(col)
    for r in snap.regions:
        for m in r.members:
            role = "coordinator" if m.peer == r.coordinator else ("voter" if m.peer in r.voters else "")
            rtt = "-" if m.rtt_s is None else f"{m.rtt_s * 1000:.2f} ms"
            members.add_row(r.region, m.peer, m.state, f"{m.load:.2f}", str(m.queue_depth), rtt, role)
    console.print(members)
    dropped = {k: v for k, v in snap.counters if v}
    if dropped:
        console.print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())))


async def _exit_with_parent(scope: trio.CancelScope, console: Any) -> None:
    """Stop when the process that started us is gone (``demo`` and benchmarks set this)."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 - polling is the only way to see a parent die
        await trio.sleep(0.5)
    console.print("stopping (parent process exited) ...")
    scope.cancel()


def cmd_node_run(args: argparse.Namespace) -> int:
    trio.run(_run_node, args)
    return 0


# ---------------------------------------------------------------- submit


def _default_peer() -> str | None:
    if os.environ.get(ENV_PEER):
        return os.environ[ENV_PEER]
    f = _home() / "last-node.addr"
    if f.exists():
        return f.read_text().strip() or None
    return None


async def _submit(args: argparse.Namespace) -> int:
    from nodes.gamer import GamerClient, GamerConfig

    peer = args.peer or _default_peer()
    if not peer:
        raise ConfigError(
            f"no peer to send to: pass --peer MULTIADDR (printed by `p2c2r node run`) or set {ENV_PEER}"
        )
    params = dict(_parse_param(p) for p in args.param or [])
    data = b""
    if args.input:
        try:
            data = Path(args.input).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read --input {args.input}: {exc.strerror}") from exc
    if args.kind == "upscale" and "codec" not in params:
        # The output format follows the --output file name (the input's is detected).
        ext = Path(args.output or args.input or "").suffix.lower().lstrip(".")
        codec = {"jpg": "jpeg"}.get(ext, ext)
        if codec in ("jpeg", "png", "webp"):
            params["codec"] = codec
    # the command-line gamer remembers whom it caught cheating across runs, like a node does
    config = GamerConfig(reputation_file=_home() / "gamer-reputation.json")
    async with GamerClient.connect([peer], config=config) as gamer:
        t0 = trio.current_time()
        handle = await gamer.submit(args.kind, data, params, deadline=args.deadline)
        out = await handle.result()
        ms = (trio.current_time() - t0) * 1000
    worker = handle.worker.hex() if handle.worker else "?"
    from mesh.identity import peer_id_to_str

    if handle.worker:
        worker = peer_id_to_str(handle.worker)
    if args.output:
        Path(args.output).write_bytes(out)
        print(f"verified result from {worker} in {ms:.1f} ms: {len(out)} bytes written to {args.output}")
    else:
        try:
            text = out.decode("utf-8")
            shown = text if len(text) <= 2000 else text[:2000] + "..."
        except UnicodeDecodeError:
            shown = f"<{len(out)} bytes of binary output; use --output FILE>"
        print(f"verified result from {worker} in {ms:.1f} ms:")
        print(shown)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    return trio.run(_submit, args)


# ---------------------------------------------------------------- kinds / demo


def cmd_kinds(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from tasks.registry import default_registry

    table = Table(title="task kinds")
    for col in ("kind", "parameters", "verification", "description"):
        table.add_column(col)
    for kind in default_registry().kinds():
        ps = ", ".join(
            f"{n}={s.default!r}" if not s.required else f"{n} (required)" for n, s in kind.params.items()
        )
        table.add_row(kind.name, ps, kind.tolerance, kind.description)
    Console().print(table)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    # The simulator is a separate use of P2C2R (research, policy choice); the CLI is its
    # entry point, imported lazily so a node never loads it.
    from simulations.cli import run_simulate

    return run_simulate(
        args.scenario,
        args.seed,
        args.out,
        progress=not args.no_progress,
        jobs=args.jobs,
        peers=args.peers,
        duration_s=args.duration,
        plots=not args.no_plots,
    )


DEMO_FPS_SECONDS = 10.0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.fps is not None:
        from nodes.demo_fps import run_fps_demo

        return run_fps_demo(fps=args.fps, seconds=args.seconds, workers=args.workers, json_path=args.json)
    if args.seconds != DEMO_FPS_SECONDS:
        raise ConfigError("--seconds goes with --fps (the frame-stream demo)")
    from nodes.demo import run_demo

    return run_demo(
        workers=4 if args.workers is None else args.workers,
        tasks=args.tasks,
        json_path=args.json,
        seed=args.seed,
        regions=tuple(r.strip() for r in args.regions.split(",")),
        direct=args.direct,
    )


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p2c2r", description="P2C2R: a peer-to-peer compute mesh for games")
    p.add_argument(
        "--log-level", default=os.environ.get("P2C2R_LOG", "warning"), help="debug, info, warning, error"
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("id", help="print this node's peer id (creates the key on first use)")
    s.add_argument("--key-file", help="Ed25519 key file (default ~/.p2c2r/node.key)")
    s.set_defaults(func=cmd_id)

    node = sub.add_parser("node", help="run a mesh node").add_subparsers(dest="node_command", required=True)
    s = node.add_parser("run", help="run a node that serves tasks")
    s.add_argument("--listen", action="append", help="multiaddr to listen on (default /ip4/0.0.0.0/tcp/4001)")
    s.add_argument("--key-file", help="Ed25519 key file (default ~/.p2c2r/node.key, created mode 0600)")
    s.add_argument("--peer", action="append", help="peer multiaddr to connect to at start (repeatable)")
    s.add_argument("--config", help="TOML config file ([node], [worker]); flags override it")
    s.add_argument("--concurrency", type=int, help="kernels run at once (default: one per core)")
    s.add_argument("--executor", choices=["thread", "process"], help="where kernels run (default thread)")
    s.add_argument("--max-frame-mib", type=float, help="largest frame accepted, MiB (default 64)")
    s.add_argument("--bootstrap", action="append", help="join the mesh through this multiaddr (repeatable)")
    s.add_argument("--region", help="region to join (default: the nearest known region, else 'default')")
    s.add_argument(
        "--voter",
        action="append",
        help="peer id of a region voter (repeatable; default: learn the electorate)",
    )
    s.add_argument("--mdns", action="store_true", help="find peers on the LAN with mDNS")
    s.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="Prometheus /metrics on 127.0.0.1:PORT (default 0: any free port; -1: off)",
    )
    s.add_argument("--warmup", action="store_true", help="run each kernel once at start (loads torch models)")
    s.add_argument(
        "--no-shm",
        action="store_true",
        help="refuse the same-host shared-memory path (TOML [worker] shm = false); payloads take the stream",
    )
    # Test-only: make this worker cheat (nodes.misbehave); hidden from --help on purpose.
    s.add_argument("--misbehave", help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_node_run)

    s = sub.add_parser("status", help="show regions, coordinators, members, load and latencies")
    s.add_argument(
        "--peer", help=f"node multiaddr to ask (default ${ENV_PEER} or the last node started here)"
    )
    s.add_argument("--json", action="store_true", help="print JSON instead of tables")
    s.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("submit", help="run one task on a node and print the verified result")
    s.add_argument("kind", help="task kind (see `p2c2r kinds`)")
    s.add_argument("--peer", help=f"worker multiaddr (default ${ENV_PEER} or the last node started here)")
    s.add_argument("--param", action="append", help="KEY=VALUE (JSON values), repeatable")
    s.add_argument("--input", help="file whose bytes are the task input")
    s.add_argument("--output", help="write the output bytes here")
    s.add_argument("--deadline", type=float, default=30.0, help="seconds to wait (default 30)")
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("kinds", help="list the built-in task kinds and their parameters")
    s.set_defaults(func=cmd_kinds)

    from simulations.cli import add_arguments as add_simulate_arguments

    s = sub.add_parser("simulate", help="run a network simulation scenario (the real cores, virtual time)")
    add_simulate_arguments(s)
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("demo", help="start a local mesh on loopback and run a mixed workload")
    s.add_argument(
        "--workers", type=int, default=None, help="worker processes (default 4; with --fps, one per core)"
    )
    s.add_argument(
        "--regions",
        default="eu,us",
        help="comma-separated regions to spread the workers over (default eu,us)",
    )
    s.add_argument(
        "--direct", action="store_true", help="skip the mesh: connect the gamer straight to every worker"
    )
    s.add_argument("--tasks", type=int, default=200, help="tasks to run (default 200)")
    s.add_argument("--json", help="write the summary figures as JSON here")
    s.add_argument("--seed", type=int, default=1, help="seed for the workload mix")
    s.add_argument(
        "--fps",
        type=float,
        default=None,
        help="instead: stream 720p->1440p upscale frames at this rate through the adaptive-quality "
        "controller, straight to the workers",
    )
    s.add_argument(
        "--seconds", type=float, default=DEMO_FPS_SECONDS, help="with --fps: how long to stream (default 10)"
    )
    s.set_defaults(func=cmd_demo)
    return p


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _setup_logging(args.log_level)
        rc: int = args.func(args)
        return rc
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:
        inner = _unwrap(exc)
        if isinstance(inner, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
            return 130
        if isinstance(inner, P2C2RError):
            print(f"error: {inner}", file=sys.stderr)
            return 2 if isinstance(inner, ConfigError) else 1
        raise


if __name__ == "__main__":
    sys.exit(main())
