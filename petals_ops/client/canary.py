"""A canary generation: a few greedy steps through the swarm, timed per step and per server (hop).

What is measured, all on the client's clock (``time.perf_counter``):
- each decoding step end to end (one ``InferenceSession.step`` plus the client's embeddings and LM head);
- each hop's part of that step: petals' ``_ServerInferenceSession.step`` for that server, i.e. from
  serializing its inputs to holding its deserialized outputs (network both ways, the server's queue and
  compute, (de)serialization) -- through :func:`petals_ops.client.door.watch_hops`;
- each hop's ``rpc_info`` round trip (a unary call its connection handler answers without the compute
  queue), a few times after the steps: the estimate of that hop's network.

Load the model with ``use_server_to_server=False`` for clean hops: with petals' server-to-server pushes a
server may start the next hop's compute before the client asks for it, and the client's time per hop no
longer adds up to the step. The first step (the prompt's prefill) is kept apart from the decoding steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from petals_ops.client.loading import LoadedModel

PROMPT = "A canary through the swarm: one, two, three,"


class CanaryTimeout(Exception):
    """The canary's deadline passed (checked between steps)."""


class CanaryFailed(Exception):
    """The canary stopped on an error; ``run`` holds what it measured until then."""

    def __init__(self, error: BaseException, run: "CanaryRun"):
        super().__init__(str(error) or type(error).__name__)
        self.run = run


@dataclass(frozen=True)
class HopStep:
    """One server's part of one inference step (``step`` 0 is the prompt's prefill)."""

    step: int
    peer_id: str
    start: int  # blocks start:end this server ran for the step
    end: int
    seconds: float
    ok: bool


@dataclass
class CanaryRun:
    prompt_tokens: int
    step_seconds: list[float] = field(default_factory=list)  # decoding steps (prefill excluded)
    prefill_seconds: float | None = None
    hops: list[HopStep] = field(default_factory=list)
    failures: list[str | None] = field(default_factory=list)  # peers petals counted a failed request of
    round_trips: dict[str, list[float]] = field(default_factory=dict)  # peer -> rpc_info seconds
    token_ids: list[int] = field(default_factory=list)


def run_canary(loaded: LoadedModel, *, steps: int = 8, prompt: str = PROMPT, pin: Sequence[str] | None = None,
               timeout: float = 60.0, round_trip_samples: int = 3) -> CanaryRun:
    """Greedy ``steps`` tokens after ``prompt`` through ``loaded`` (a petals backend), routed through the
    servers ``pin`` only when given (petals' ``allowed_servers``; None: petals' own route choice).

    Raises :class:`CanaryFailed` (with what was measured until then) on any error, a
    :class:`CanaryTimeout` once ``timeout`` seconds have passed among them (checked between steps; each
    step is bounded by the client's own request timeout and retries)."""
    ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"]
    run = CanaryRun(prompt_tokens=int(ids.shape[1]))
    try:
        _run(loaded, run, ids, steps=steps, pin=pin, timeout=timeout, round_trip_samples=round_trip_samples)
    except Exception as e:
        raise CanaryFailed(e, run) from e
    return run


def _run(loaded: LoadedModel, run: CanaryRun, ids, *, steps: int, pin: Sequence[str] | None, timeout: float,
         round_trip_samples: int) -> None:
    import torch

    from petals_ops.client import door
    from petals_ops.client.backends import Backend

    deadline = time.monotonic() + timeout
    model = loaded.model
    current = {"step": 0}

    def on_hop(peer_id, start, end, tokens, seconds, ok):
        run.hops.append(HopStep(current["step"], peer_id, start, end, seconds, ok))

    def check_deadline():
        if time.monotonic() > deadline:
            raise CanaryTimeout(f"the canary took more than {timeout:g} s")

    door.pin_servers(model, None if pin is None else list(pin), timeout=min(30.0, timeout))
    backend = Backend(loaded)
    with backend.quiet_gc(), door.watch_hops(model, on_hop, run.failures.append):
        with backend.session(batch=1, max_length=run.prompt_tokens + steps + 1) as session:
            started = time.perf_counter()
            logits = session.prefill(ids)
            run.prefill_seconds = time.perf_counter() - started
            for step in range(1, steps + 1):
                check_deadline()
                token = int(torch.argmax(logits[0]))
                run.token_ids.append(token)
                current["step"] = step
                started = time.perf_counter()
                logits = session.forward(torch.tensor([[token]]))
                run.step_seconds.append(time.perf_counter() - started)
        for peer_id, start in _served(run.hops):
            for _ in range(round_trip_samples):
                check_deadline()
                run.round_trips.setdefault(peer_id, []).append(
                    door.rpc_info_seconds(model, peer_id, start, timeout=min(5.0, timeout)))


def _served(hops: Sequence[HopStep]) -> list[tuple[str, int]]:
    """(peer, its first block) of each server that answered a step, in route order."""
    seen: dict[str, int] = {}
    for hop in hops:
        if hop.ok:
            seen.setdefault(hop.peer_id, hop.start)
    return list(seen.items())
