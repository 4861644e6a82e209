"""Which swarm a command talks to: explicit ``--initial-peers``/``--model``, else the local swarm.

This lives in the lab, not in the client: filling in what the user left out means reading the local
swarm's state (:mod:`petals_ops.lab.local_swarm`), and the client layer knows no lab. The commands above
(bench, tune, generate, swarm status, the exporter) resolve their target here and hand the client a
:class:`SwarmTarget` (peers and a :class:`~petals_ops.client.models.ModelRef`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from petals_ops.util.errors import InputError
from petals_ops.client.models import ModelRef, resolve_model
from petals_ops.client.options import ClientOptions


@dataclass(frozen=True)
class SwarmTarget:
    initial_peers: list[str]
    model: ModelRef
    local_run_dir: str | None = None  # set when the target is a local swarm
    # The servers' --inference_max_length when we know it (we started them); servers do not announce it.
    max_length: int | None = None


def is_peer_multiaddr(value: str) -> bool:
    """Looks like /ip4/HOST/tcp/PORT/p2p/PEER_ID: an address a DHT can bootstrap from (a peer id is
    required)."""
    return value.startswith("/") and "/p2p/" in value


def split_peers(values: Sequence[str]) -> list[str]:
    """Accept peers repeated, space- or comma-separated (as printed by 'swarm local up')."""
    peers = [p for v in values for p in v.replace(",", " ").split()]
    for p in peers:
        if not is_peer_multiaddr(p):
            raise InputError(
                f"--initial-peers {p} is not a multiaddr with a peer id",
                fix="use the form /ip4/HOST/tcp/PORT/p2p/PEER_ID",
            )
    return peers


def resolve_target(
    initial_peers: Sequence[str] = (),
    model: str | None = None,
    *,
    dht_prefix: str | None = None,
    num_blocks: int | None = None,
    run_dir: str | Path | None = None,
) -> SwarmTarget:
    """Explicit peers win; without them the local swarm in ``run_dir`` supplies peers and model."""
    peers = split_peers(initial_peers)
    if peers:
        if not model:
            raise InputError("--initial-peers was given without --model", fix="pass --model NAME_OR_DIR too")
        return SwarmTarget(peers, resolve_model(model, dht_prefix=dht_prefix, num_blocks=num_blocks))
    from petals_ops.lab.local_swarm import SERVER_DEFAULTS, load_running

    swarm = load_running(run_dir)
    ref = resolve_model(model or swarm.model_dir, dht_prefix=dht_prefix, num_blocks=num_blocks)
    return SwarmTarget(swarm.initial_peers, ref, swarm.run_dir,
                       max_length=SERVER_DEFAULTS["inference_max_length"])


def resolve_for_backend(client: ClientOptions) -> SwarmTarget:
    """The target of a command with ``--backend``: the swarm's (as :func:`resolve_target`) for ``petals``
    or explicit peers; for ``local``, ``--model``, else the local swarm's checkpoint, else (no swarm
    running in the default place) the shipped tiny-bloom-arith, without peers (a checkpoint in-process
    needs no swarm, so a fresh install runs ``bench gsm8k --backend local`` as it is)."""
    if client.through_swarm or client.initial_peers:
        return resolve_target(client.initial_peers, client.model, dht_prefix=client.dht_prefix,
                              num_blocks=client.num_blocks, run_dir=client.swarm_dir)
    if client.model:
        return SwarmTarget([], resolve_model(client.model, dht_prefix=client.dht_prefix,
                                             num_blocks=client.num_blocks))
    from petals_ops.lab.local_swarm import LocalSwarm, default_run_dir, load_running

    if client.swarm_dir is None:
        swarm = LocalSwarm.load(default_run_dir())
        if swarm is None or not swarm.any_alive():
            from petals_ops.lab.tiny_model import ARITH_MODEL_DIR

            return SwarmTarget([], resolve_model(str(ARITH_MODEL_DIR)))
    return SwarmTarget([], resolve_model(load_running(client.swarm_dir).model_dir))
