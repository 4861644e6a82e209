"""The token loop every method shares: prefill once, then one step per token for each row of a batch.

The rows of a batch are paths of the same prompt (Petals' BLOOM rejects padding, so different questions
are never batched). Only the last position goes through the LM head (BLOOM's vocabulary is 250k). Each
path stops client-side at its first stop string (``\\nQ:``, ``\\n\\n``) or EOS; the batch stops when every
path has stopped or at ``max_new_tokens``. A sampled path draws from its own seeded ``torch.Generator``
(seed, question id, path index), so paths do not depend on how they are split into batches nor on
concurrency. The loop is backend-agnostic: it sees a :class:`petals_ops.client.backends.DecodeSession`.

With the calculator on (``DecodeSpec.calculator``), a row whose newest token completed ``<expression> =``
gets the tokens of the exact result (:mod:`petals_ops.bench.calculator`) queued as its next inputs: at
each step a row with queued tokens takes its next forced token instead of its own, while the other rows
decode as usual. Forced tokens go through the same session, one step each, with the rest of the batch
(no extra round trip). Every row still draws from its generator at every step, forced or not, so turning
the calculator on never shifts any row's random stream. Each path records its interventions
(:class:`Intervention`).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from petals_ops.bench import calculator
from petals_ops.bench.extraction import DEFAULT_STOPS, NUMBER_RE, answers_equal, truncate_at_stop


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
    calculator: bool = False  # force the exact result after '<expression> =' (see the module docstring)


@dataclass(frozen=True)
class Intervention:
    """One calculator intervention in a path."""

    position: int  # index among the path's new tokens of the first forced token (the '=' is just before)
    expression: str  # as written, without the '='
    result: str  # the forced result (the forced text is this, after a space unless the text had one)
    model: str  # what the model chose itself at the forced steps, up to its first disagreement (included);
    # when it agreed all along, also its token after the result (so '23' then '4' shows as '234')
    model_wrong: bool | None  # its own number (as far as it went) differs from the result; None: cut short

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PathOutput:
    index: int
    raw: str  # everything decoded (up to the step the batch stopped)
    text: str  # cut at the first stop string: what is scored
    tokens: int  # tokens this path used (up to and including its stop)
    finish: str  # "stop", "eos" or "length"
    interventions: list[Intervention] = field(default_factory=list)  # the calculator's, in order
    ids: list[int] = field(default_factory=list)  # the new token ids (forced ones included)


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
        generators = [torch.Generator().manual_seed(path_seed(sampling.seed, question_id, i))
                      for i in path_indices]
    new_ids: list[list[int]] = [[] for _ in range(batch)]
    finish: list[str | None] = [None] * batch
    forcing: list[_Forcing | None] = [None] * batch  # the calculator's tokens queued for a row
    forcings: list[list[_Forcing]] = [[] for _ in range(batch)]
    # token id -> its text has an '=' (the calculator's cheap first check)
    writes_equals: dict[int, bool] = {}
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
                elif forcing[r] is not None:  # the model's own token right after a forced result
                    forcing[r].after(token)
                    forcing[r] = None
                new_ids[r].append(token)
                if eos is not None and token == eos:
                    finish[r] = "eos"
                elif spec.stops and _ends_in_stop(tok, new_ids[r], spec.stops):
                    finish[r] = "stop"
                elif spec.calculator and not forced:
                    found = _calculation(tok, new_ids[r], token, writes_equals)
                    if found is not None:
                        forcing[r] = _Forcing(len(new_ids[r]), found,
                                              tok(found.forced_text, add_special_tokens=False)["input_ids"])
                        forcings[r].append(forcing[r])
            if all(f is not None for f in finish) or steps >= spec.max_new_tokens:
                break
            feed = [filler if finish[r] is not None else new_ids[r][-1] for r in range(batch)]
            logits = session.forward(torch.tensor(feed, dtype=torch.long).view(batch, 1))
        servers = session.served_peers
    outputs = []
    for r, index in enumerate(path_indices):
        raw = tok.decode(new_ids[r], skip_special_tokens=True)
        text, _ = truncate_at_stop(raw, spec.stops)
        outputs.append(PathOutput(index=index, raw=raw, text=text, tokens=len(new_ids[r]),
                                  finish=finish[r] or "length",
                                  interventions=[f.intervention(tok) for f in forcings[r]], ids=new_ids[r]))
    return BatchOutput(paths=outputs, prompt_tokens=prompt_len, steps=steps,
                       seconds=time.monotonic() - started, servers=servers)


# a stop string (a few characters) that appears with the newest token lies in this tail
STOP_WINDOW_TOKENS = 16


def _ends_in_stop(tok, ids: list[int], stops: Sequence[str]) -> bool:
    """Whether the newest token completed a stop string. Only the tail is decoded: decoding the whole path
    at every step made the loop quadratic in its length (see benchmarks/bench_arith.py)."""
    window = max(STOP_WINDOW_TOKENS, max(len(s) for s in stops))
    return truncate_at_stop(tok.decode(ids[-window:], skip_special_tokens=True), stops)[1] is not None


CALC_WINDOW_TOKENS = 64  # the decoded tail the calculator reads: an expression cut by it is left to the model


def _calculation(tok, ids: list[int], token: int,
                 writes_equals: dict[int, bool]) -> calculator.Calculation | None:
    """The calculation the newest token completed (it wrote the '='), read from a tail window of the path."""
    if token not in writes_equals:
        writes_equals[token] = "=" in tok.decode([token])
    if not writes_equals[token]:
        return None
    text = tok.decode(ids[-CALC_WINDOW_TOKENS:], skip_special_tokens=True)
    return calculator.find_calculation(text, start_is_cut=len(ids) > CALC_WINDOW_TOKENS)


class _Forcing:
    """A row's forced result in progress: the tokens still to force and what the model chose instead."""

    def __init__(self, position: int, found: calculator.Calculation, ids: list[int]):
        self.position, self.found, self.queue = position, found, list(ids)
        self.own: list[int] = []
        self.known = False  # the model's own number is known: it disagreed, or the step after the result ran

    def take(self, own: int) -> int:
        """The next forced token, noting the model's own choice ``own`` (until it first disagrees)."""
        token = self.queue.pop(0)
        if not self.known:
            self.own.append(own)
            self.known = own != token
        return token

    def after(self, own: int) -> None:
        if not self.known:
            self.own.append(own)
            self.known = True

    def intervention(self, tok) -> Intervention:
        model = tok.decode(self.own, skip_special_tokens=True)
        wrong = None
        if self.known:
            m = NUMBER_RE.match(model.strip())
            wrong = m is None or not answers_equal(m.group(0), self.found.result)
        return Intervention(position=self.position, expression=self.found.expression,
                            result=self.found.result, model=model, model_wrong=wrong)


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
