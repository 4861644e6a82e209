"""Simulate a large swarm for benchmarks: declare many servers' records in a (local) DHT, no servers needed.

Each fake server gets a random peer id and announces a contiguous span of blocks exactly as a Petals server
does (``ServerInfo`` tuples under the keys ``{dht_prefix}.{i}``, one subkey per peer id), so a DHT walk
sees N server records. Used by benchmarks/bench_exporter.py; hivemind comes through the door.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Sequence


async def _store_many(dht, node, keys, subkeys, values, expiration_time):
    """Runs inside the DHT process (module-level, so hivemind can pickle it)."""
    return await node.store_many(keys=keys, subkeys=subkeys, values=values, expiration_time=expiration_time)


def fake_peer_id() -> str:
    from petals_ops.client import door

    return door.PeerID(b"\x12\x20" + os.urandom(32)).to_base58()  # a sha2-256 multihash, like real ids


def declare_fake_servers(initial_peers: Sequence[str], dht_prefix: str, num_blocks: int, servers: int, *,
                         span: int = 10, ttl: float = 3600.0, seed: int = 0, batch: int = 100) -> list[str]:
    """Announce ``servers`` ONLINE servers (``span`` blocks each, spread over the model); return their
    peer ids.

    Small batches: a large pickled call (thousands of records) over hivemind's DHT pipe made the DHT process
    fail with EAGAIN and the caller hang.
    """
    from petals_ops.client import door

    rng = random.Random(seed)
    keys, subkeys, values, peers = [], [], [], []
    for _ in range(servers):
        peer = fake_peer_id()
        start = rng.randrange(0, max(1, num_blocks - span + 1))
        end = min(num_blocks, start + span)
        info = door.ServerInfo(
            state=door.ServerState.ONLINE, throughput=rng.uniform(50, 500), start_block=start, end_block=end,
            public_name=f"sim-{len(peers)}", version=door.PETALS_VERSION, torch_dtype="bfloat16",
            quant_type="nf4", using_relay=False, cache_tokens_left=rng.randrange(0, 200_000),
        )
        for block in range(start, end):
            keys.append(f"{dht_prefix}.{block}")
            subkeys.append(peer)
            values.append(info.to_tuple())
        peers.append(peer)
    dht = door.DHT(initial_peers=list(initial_peers), client_mode=True, start=True)
    try:
        expiration = door.hivemind.get_dht_time() + ttl
        todo = list(range(len(keys)))
        for _ in range(3):  # a store that timed out (a loaded machine) is tried again, twice
            failed = []
            for i in range(0, len(todo), batch):
                chunk = todo[i:i + batch]
                ok = dht.run_coroutine(functools.partial(
                    _store_many, keys=[keys[j] for j in chunk], subkeys=[subkeys[j] for j in chunk],
                    values=[values[j] for j in chunk], expiration_time=expiration))
                failed += [j for j in chunk if not ok.get((keys[j], subkeys[j]))]
            if not failed:
                break
            todo = failed
    finally:
        dht.shutdown()
    return peers


def store_records(initial_peers: Sequence[str], records: Sequence[tuple[str, str, object]], *,
                  ttl: float = 600.0) -> None:
    """Store raw ``(key, subkey, value)`` records in the DHT, as any peer of a public swarm can (a server
    record with a hostile ``public_name``, a ``_petals.models`` entry with a bad block count): the tests
    of what petals-ops does with untrusted announcements use it."""
    from petals_ops.client import door

    dht = door.DHT(initial_peers=list(initial_peers), client_mode=True, start=True)
    try:
        expiration = door.hivemind.get_dht_time() + ttl
        dht.run_coroutine(functools.partial(
            _store_many, keys=[r[0] for r in records], subkeys=[r[1] for r in records],
            values=[r[2] for r in records], expiration_time=expiration))
    finally:
        dht.shutdown()


def server_record(state: str = "ONLINE", **fields) -> tuple:
    """A server's DHT value (petals' ``ServerInfo`` tuple) with ``fields`` as announced."""
    from petals_ops.client import door

    return door.ServerInfo(state=door.ServerState[state], throughput=1.0, **fields).to_tuple()
