"""The one wall-clock read in product code.

Timing logic never uses it: cores take ``now`` and shells use trio's clock. Only timestamps
that cross machines are wall-clock milliseconds: DHT record expiry (``mesh.discovery``), the
time a worker attests in a result receipt (``nodes.worker``) and the creation time of
gossiped evidence (``nodes.evidence``).
"""

from __future__ import annotations

import time


def wall_ms() -> int:
    """Milliseconds since the Unix epoch, for timestamps that other machines read."""
    return int(time.time() * 1000)
