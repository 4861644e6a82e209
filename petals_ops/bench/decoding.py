"""The token loop every method shares: prefill once, then one step per token for each row of a batch.

The rows of a batch are paths of the same prompt (Petals' BLOOM rejects padding, so different questions
are never batched). Only the last position goes through the LM head (BLOOM's vocabulary is 250k). Each
path stops client-side at its first stop string (``\\nQ:``, ``\\n\\n``) or EOS; the batch stops when every
path has stopped or at ``max_new_tokens``. A sampled path draws from its own seeded ``torch.Generator``
(seed, question id, path index), so paths do not depend on how they are split into batches nor on
concurrency. The loop is backend-agnostic: it sees a :class:`petals_ops.backends.DecodeSession`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from petals_ops.bench.extraction import DEFAULT_STOPS, truncate_at_stop


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


@dataclass(frozen=True)
class DecodeSpec:
    sampling: Sampling
    max_new_tokens: int
    stops: tuple[str, ...] = DEFAULT_STOPS


@dataclass
class PathOutput:
    index: int
    raw: str  # everything decoded (up to the step the batch stopped)
    text: str  # cut at the first stop string: what is scored
    tokens: int  # tokens this path used (up to and including its stop)
    finish: str  # "stop", "eos" or "length"


@dataclass
class BatchOutput:
    paths: list[PathOutput]
    prompt_tokens: int
    steps: int
    seconds: float
    servers: list[str] = field(default_factory=list)


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
        generators = [torch.Generator().manual_seed(path_seed(sampling.seed, question_id, i)) for i in path_indices]
    new_ids: list[list[int]] = [[] for _ in range(batch)]
    finish: list[str | None] = [None] * batch
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
            chosen = _next_tokens(logits, sampling, generators)
            for r, token in enumerate(chosen):
                if finish[r] is not None:
                    continue
                new_ids[r].append(token)
                if eos is not None and token == eos:
                    finish[r] = "eos"
                elif spec.stops and _ends_in_stop(tok, new_ids[r], spec.stops):
                    finish[r] = "stop"
            if all(f is not None for f in finish) or steps >= spec.max_new_tokens:
                break
            feed = [filler if finish[r] is not None else chosen[r] for r in range(batch)]
            logits = session.forward(torch.tensor(feed, dtype=torch.long).view(batch, 1))
        servers = session.served_peers
    outputs = []
    for r, index in enumerate(path_indices):
        raw = tok.decode(new_ids[r], skip_special_tokens=True)
        text, _ = truncate_at_stop(raw, spec.stops)
        outputs.append(PathOutput(index=index, raw=raw, text=text, tokens=len(new_ids[r]), finish=finish[r] or "length"))
    return BatchOutput(paths=outputs, prompt_tokens=prompt_len, steps=steps, seconds=time.monotonic() - started,
                       servers=servers)


STOP_WINDOW_TOKENS = 16  # a stop string (a few characters) that appears with the newest token lies in this tail


def _ends_in_stop(tok, ids: list[int], stops: Sequence[str]) -> bool:
    """Whether the newest token completed a stop string. Only the tail is decoded: decoding the whole path
    at every step made the loop quadratic in its length (see benchmarks/bench_arith.py)."""
    window = max(STOP_WINDOW_TOKENS, max(len(s) for s in stops))
    return truncate_at_stop(tok.decode(ids[-window:], skip_special_tokens=True), stops)[1] is not None


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
