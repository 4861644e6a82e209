"""Every knob of the client in one value: which swarm and model, and how hard the petals client tries.

:class:`ClientOptions` is what ``bench gsm8k``, ``tune gsm8k`` and ``generate`` share (the CLI spells
each option once, in :mod:`petals_ops.cli.options`). The target fields say what to talk to; where they
are left empty the local lab swarm fills them in (:func:`petals_ops.lab.target.resolve_for_backend`:
finding that swarm is the lab's business, not the client's). The retry fields bound the petals client
itself; retrying a whole unit of work (a question, a training step) is :mod:`petals_ops.client.retry`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from petals_ops.util.errors import InputError

BACKENDS = ("petals", "local")  # through the swarm, or the same checkpoint in this process
DEFAULT_CLIENT_RETRIES = 3  # the petals client's own retries per failed request (its default: forever)
DEFAULT_REQUEST_TIMEOUT = 60.0


@dataclass(frozen=True)
class ClientOptions:
    backend: str = "petals"
    initial_peers: tuple[str, ...] = ()  # multiaddrs of the swarm's DHT; none: the local swarm's
    model: str | None = None  # hub name or model directory; None: the local swarm's model
    dht_prefix: str | None = None
    num_blocks: int | None = None
    swarm_dir: str | None = None  # the local swarm's run directory (None: its default)
    client_retries: int = DEFAULT_CLIENT_RETRIES
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT

    def validate(self) -> ClientOptions:
        if self.backend not in BACKENDS:
            raise InputError(f"--backend {self.backend} is unknown", fix=f"use one of: {', '.join(BACKENDS)}")
        if self.client_retries < 0:
            raise InputError(f"--client-retries {self.client_retries} must be >= 0",
                             fix=f"use --client-retries {DEFAULT_CLIENT_RETRIES}")
        if not (math.isfinite(self.request_timeout) and self.request_timeout > 0):
            raise InputError(f"--request-timeout {self.request_timeout} must be a number > 0 seconds",
                             fix=f"use --request-timeout {DEFAULT_REQUEST_TIMEOUT:g}")
        return self

    @property
    def through_swarm(self) -> bool:
        return self.backend == "petals"

    def client_kwargs(self) -> dict:
        """The petals client's bounds, as the loaders take them (``max_retries``, ``request_timeout``)."""
        return {"max_retries": self.client_retries, "request_timeout": self.request_timeout}
