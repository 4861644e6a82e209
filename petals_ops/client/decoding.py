"""The token loop every method shares: prefill once, then one step per token for each row of a batch.

The rows of a batch are paths of the same prompt (Petals' BLOOM rejects padding, so different questions
are never batched). Only the last position goes through the LM head (BLOOM's vocabulary is 250k). A path
stops at EOS, or when a hook says so; the batch stops when every path has stopped or at
``max_new_tokens``. A sampled path draws from its own seeded ``torch.Generator`` (seed, question id, path
index), so paths do not depend on how they are split into batches nor on concurrency. The loop is
backend-agnostic: it sees a :class:`petals_ops.client.backends.DecodeSession`.

Per-step hooks (:class:`Hook`) carry what the caller knows and the loop does not: the bench's stop strings
(``\\nQ:``) and its calculator are hooks it passes in, so this module imports nothing above the client. A
hook sees each row's newest token and may end the row (:data:`STOP`) or queue tokens to force as the row's
next inputs (a :class:`Forcing`): at each step a row with queued tokens takes its next forced token instead
of its own, while the other rows decode as usual. Forced tokens go through the same session, one step
each, with the rest of the batch (no extra round trip). Every row still draws from its generator at every
step, forced or not, so forcing never shifts any row's random stream.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class QuestionTimeout(Exception):
    """The per-question deadline passed (checked between tokens)."""


class Cancelled(Exception):
    """The run is being interrupted (Ctrl-C): stop at the next token."""


@dataclass(frozen=True)
class Sampling:
    """How a path picks its next token: greedy (``temperature`` None) or sampled with top-k."""

    temperature: float | None = None
    top_k: int | None = None
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature is None


STOP = "stop"  # what a hook's step returns to end a row (its finish reason is "stop")


class Forcing(Protocol):
    """Tokens a hook queued for one row, and what it learns of the model's own choices meanwhile."""

    queue: list[int]  # the tokens still to force, in order

    def take(self, own: int) -> int:
        """The next forced token; ``own`` is what the model chose itself at this step."""

    def after(self, own: int) -> None:
        """The model's own token at the first step after the last forced one."""


class Hook(Protocol):
    """A per-step hook: :meth:`start` is called once per batch and returns that batch's state."""

    def start(self, tok, batch: int) -> HookRun: ...


class HookRun(Protocol):
    def step(self, row: int, ids: list[int], token: int, forced: bool) -> str | Forcing | None:
        """Row ``row`` got ``token`` (its new ids so far are ``ids``; ``forced``: a queued token).
        Return :data:`STOP`, a :class:`Forcing` to queue tokens, or None. Hooks are asked in order; the
        first that answers wins, the later ones are not asked at that step."""

    def text(self, row: int, raw: str) -> str:
        """What the row's text is (what is scored), from what was decoded."""

    def notes(self, row: int) -> list[Any]:
        """What the hook records for the path (e.g. the calculator's interventions), in order."""


@dataclass(frozen=True)
class DecodeSpec:
    sampling: Sampling
    max_new_tokens: int
    hooks: tuple[Hook, ...] = ()  # asked in order at every step (see the module docstring)


@dataclass
class PathOutput:
    index: int
    raw: str  # everything decoded (up to the step the batch stopped)
    text: str  # cut at the first stop string: what is scored
    tokens: int  # tokens this path used (up to and including its stop)
    finish: str  # "stop", "eos" or "length"
    interventions: list[Any] = field(default_factory=list)  # what the hooks noted (calculator), in order
    ids: list[int] = field(default_factory=list)  # the new token ids (forced ones included)


@dataclass
class BatchOutput:
    paths: list[PathOutput]
    prompt_tokens: int
    steps: int
    seconds: float
    servers: list[str] = field(default_factory=list)
    forwards: int = 0  # requests the session sent through its route: prefill chunks and decoding steps


def path_seed(seed: int, question_id: str, path: int) -> int:
    digest = hashlib.sha256(f"{seed}|{question_id}|{path}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def plan_batches(paths: int, batch_size: int) -> list[list[int]]:
    """Split path indices 0..paths-1 into consecutive batches of at most ``batch_size``."""
    batch_size = max(1, batch_size)
    return [list(range(i, min(paths, i + batch_size))) for i in range(0, paths, batch_size)]


def decode_batch(backend, prompt_ids, path_indices: Sequence[int], spec: DecodeSpec, question_id: str, *,
                 deadline: float | None = None, cancel: threading.Event | None = None) -> BatchOutput:
    """Generate ``len(path_indices)`` paths of one prompt as one batch (one session of ``backend``)."""
    import torch

    tok = backend.tokenizer
    batch = len(path_indices)
    prompt_len = int(prompt_ids.shape[1])
    eos = tok.eos_token_id
    filler = tok.pad_token_id if tok.pad_token_id is not None else (eos or 0)
    sampling = spec.sampling
    generators = None
    if not sampling.greedy:
        generators = [torch.Generator().manual_seed(path_seed(sampling.seed, question_id, i))
                      for i in path_indices]
    new_ids: list[list[int]] = [[] for _ in range(batch)]
    finish: list[str | None] = [None] * batch
    forcing: list[Forcing | None] = [None] * batch  # tokens a hook queued for a row
    hooks = [hook.start(tok, batch) for hook in spec.hooks]
    started = time.monotonic()
    steps = 0

    def check() -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if deadline is not None and time.monotonic() > deadline:
            raise QuestionTimeout(f"no answer within the per-question timeout after {steps} steps")

    with backend.session(batch, prompt_len + spec.max_new_tokens) as session:
        check()
        logits = session.prefill(prompt_ids.repeat(batch, 1))
        while True:
            check()
            steps += 1
            chosen = _next_tokens(logits, sampling, generators)  # every row draws, forced or not
            for r, token in enumerate(chosen):
                if finish[r] is not None:
                    continue
                forced = forcing[r] is not None and bool(forcing[r].queue)
                if forced:
                    token = forcing[r].take(token)
                elif forcing[r] is not None:  # the model's own token right after the forced ones
                    forcing[r].after(token)
                    forcing[r] = None
                new_ids[r].append(token)
                if eos is not None and token == eos:
                    finish[r] = "eos"
                    continue
                for hook in hooks:
                    answer = hook.step(r, new_ids[r], token, forced)
                    if answer == STOP:
                        finish[r] = "stop"
                    elif answer is not None:
                        forcing[r] = answer
                    if answer is not None:
                        break
            if all(f is not None for f in finish) or steps >= spec.max_new_tokens:
                break
            feed = [filler if finish[r] is not None else new_ids[r][-1] for r in range(batch)]
            logits = session.forward(torch.tensor(feed, dtype=torch.long).view(batch, 1))
        servers = session.served_peers
        forwards = session.forwards
    outputs = []
    for r, index in enumerate(path_indices):
        raw = tok.decode(new_ids[r], skip_special_tokens=True)
        text = raw
        for hook in hooks:
            text = hook.text(r, text)
        outputs.append(PathOutput(index=index, raw=raw, text=text, tokens=len(new_ids[r]),
                                  finish=finish[r] or "length",
                                  interventions=[n for hook in hooks for n in hook.notes(r)], ids=new_ids[r]))
    return BatchOutput(paths=outputs, prompt_tokens=prompt_len, steps=steps,
                       seconds=time.monotonic() - started, servers=servers, forwards=forwards)


def _next_tokens(logits, sampling: Sampling, generators) -> list[int]:
    import torch

    if sampling.greedy:
        return [int(t) for t in torch.argmax(logits, dim=-1)]
    scores = logits / sampling.temperature
    if sampling.top_k:
        k = min(sampling.top_k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return [int(torch.multinomial(probs[r], 1, generator=generators[r])) for r in range(len(generators))]


def max_batch_for_cache(servers: Sequence, max_length: int, concurrency: int = 1) -> int | None:
    """The largest batch every ONLINE server can hold a KV cache for, shared by ``concurrency`` questions.

    A server announces ``cache_tokens_left`` in units of hidden_size values; a session of batch b and
    length L over its n blocks takes 2 (keys and values) * b * L * n of them. None when no server says.
    """
    caps = []
    for s in servers:
        if s.state == "ONLINE" and s.cache_tokens_left is not None and s.num_blocks > 0:
            caps.append(int(s.cache_tokens_left) // (2 * max_length * s.num_blocks))
    if not caps:
        return None
    return max(1, min(caps) // max(1, concurrency))
