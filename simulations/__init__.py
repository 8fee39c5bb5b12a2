"""Deterministic discrete-event simulation of a P2C2R mesh.

The simulator drives the *same* sans-IO cores the real node uses — ``mesh.membership``
(heartbeats and failure suspicion), ``mesh.election`` (per-region coordinator election),
``mesh.vivaldi`` (latency coordinates) and ``nodes.scheduler`` (placement leases and the
policies behind ``PlacementPolicy``) — under virtual time with a seeded network model
(regions, WAN RTT matrix, jitter, bandwidth, loss, partitions, churn) and seeded workloads.

Modules
    ``engine``    heap-based event loop ordered by (time, sequence number)
    ``scenario``  scenario TOML schema, loading and validation
    ``network``   regions, RTT, jitter, bandwidth, loss and partitions
    ``world``     the policy-independent population: peers, sessions, gamers, coordinates
    ``workload``  task-cost calibration (bench JSON or ``TaskKind.cost``) and stream specs
    ``sim``       one simulation run for one placement policy
    ``report``    CSV/JSON outputs and target checks; ``plots``: matplotlib figures
    ``cli``       ``run_simulate`` (the ``p2c2r simulate`` entry point) and the parallel runner

Product code never imports this package.
"""
