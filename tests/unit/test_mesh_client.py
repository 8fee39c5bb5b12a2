"""Pure parts of the SDK's mesh client (``nodes.mesh_client``)."""

from __future__ import annotations

import hashlib

from mesh import control_wire as cw
from mesh.identity import Identity, peer_id_to_str
from nodes.mesh_client import lease_exclusions


def pid(i: int) -> bytes:
    return Identity.from_seed(hashlib.sha256(b"mc/%d" % i).digest()).peer_id_bytes


def test_lease_exclusions_list_the_asked_regions_bans_first_within_the_cap() -> None:
    banned = [pid(i) for i in range(cw.MAX_EXCLUDE + 20)]
    # the region's banned members come last in the gamer's list (e.g. sorted by peer id)
    members = {peer_id_to_str(w) for w in banned[-5:]} | {peer_id_to_str(pid(999))}
    out = lease_exclusions(banned, members)
    assert len(out) == cw.MAX_EXCLUDE
    assert set(out[:5]) == {peer_id_to_str(w) for w in banned[-5:]}
    assert peer_id_to_str(pid(999)) not in out  # a member the gamer did not ban
    assert set(out[5:]) <= {peer_id_to_str(w) for w in banned[:-5]}
    assert lease_exclusions([], members) == ()
    assert lease_exclusions(banned[:3], set()) == tuple(peer_id_to_str(w) for w in banned[:3])
