"""The two methods, one code path: CoT = 1 greedy path, SC = K sampled paths of the same prompt.

:func:`run_batch` is a plain token loop (prefill, then one step per token for every path of the batch)
over either backend: with ``petals`` the steps go through one fresh inference session (the same prompt
repeated in the batch: Petals' BLOOM rejects padding, so different questions are never batched); with
``local`` the same checkpoint runs in-process with its KV cache. Only the last position goes through
the LM head (BLOOM's vocabulary is 250k). Each path stops client-side at its first stop string
(``\\nQ:``, ``\\n\\n``) or EOS, the batch stops when every path has stopped or at ``max_new_tokens``.

Each sampled path has its own seeded ``torch.Generator`` (seed, question id, path index), so the paths
do not depend on how the K paths are split into batches nor on concurrency.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from petals_ops.bench.extraction import DEFAULT_STOPS, truncate_at_stop
from petals_ops.errors import InputError

METHODS = ("cot", "sc")
# A Petals server refuses a step of more than --max_batch_size tokens (batch x new tokens; 2048 by default
# for BLOOM): the prompt is prefilled in chunks of at most this many tokens across the batch.
MAX_TASK_TOKENS = 2048


class QuestionTimeout(Exception):
    """The per-question deadline passed (checked between tokens)."""


class Cancelled(Exception):
    """The run is being interrupted (Ctrl-C): stop at the next token."""


@dataclass(frozen=True)
class MethodConfig:
    method: str = "cot"
    paths: int = 1
    temperature: float = 0.7
    top_k: int | None = 40
    max_new_tokens: int = 256
    stops: tuple[str, ...] = DEFAULT_STOPS
    seed: int = 0

    @property
    def sample(self) -> bool:
        return self.method == "sc"

    def validate(self) -> MethodConfig:
        if self.method not in METHODS:
            raise InputError(f"--method {self.method} is unknown", fix="use cot or sc")
        if self.max_new_tokens < 1:
            raise InputError(f"--max-new-tokens {self.max_new_tokens} must be at least 1", fix="use --max-new-tokens 256")
        if self.method == "cot" and self.paths != 1:
            raise InputError(f"--paths {self.paths} needs --method sc (cot is one greedy path)", fix="drop --paths or use --method sc")
        if self.method == "sc":
            if self.paths < 1:
                raise InputError(f"--paths {self.paths} must be at least 1", fix="use --paths 10")
            if self.temperature <= 0:
                raise InputError(f"--temperature {self.temperature} must be > 0 for sampling", fix="use --temperature 0.7")
            if self.top_k is not None and self.top_k < 1:
                raise InputError(f"--top-k {self.top_k} must be >= 1", fix="use --top-k 40 (or 0 for no top-k)")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stops"] = list(self.stops)
        if not self.sample:  # sampling parameters mean nothing for greedy decoding
            data.update(temperature=None, top_k=None)
        return data


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


def max_batch_for_cache(servers: Sequence[Any], max_length: int, concurrency: int = 1) -> int | None:
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


def _served_peers(session) -> list[str]:
    peers = []
    for server_session in getattr(session, "_server_sessions", None) or []:
        peer = getattr(getattr(server_session, "span", None), "peer_id", None)
        if peer is not None:
            peers.append(peer.to_base58() if hasattr(peer, "to_base58") else str(peer))
    return peers


PEER_ID_RE = re.compile(r"\b(Qm[1-9A-HJ-NP-Za-km-z]{44}|12D3KooW[1-9A-HJ-NP-Za-km-z]{44})\b")


def ban_failed_peers(loaded, error: BaseException) -> list[str]:
    """Tell the petals client to avoid the servers a failed attempt names (e.g. 'failed to dial PEER').

    petals bans a peer only when an established server session fails; a server that died is still
    routed to (its DHT record outlives it until expiry) and every fresh session fails to connect to it.
    """
    if loaded.backend != "petals" or loaded.model is None:
        return []
    texts, seen = [], error
    while seen is not None and len(texts) < 5:
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    peers = sorted(set(PEER_ID_RE.findall(" ".join(texts))))
    if peers:
        from petals_ops import petals_door as door

        manager = loaded.model.transformer.h.sequence_manager
        for peer in peers:
            manager.on_request_failure(door.PeerID.from_base58(peer))
        # on_request_failure leaves the peer in the precomputed spans: rebuild the routing (it skips banned peers)
        manager.update(wait=False)
        manager.ready.wait(timeout=15)
    return peers


def _defuse(server_sessions) -> None:
    """Close what the session left open, and make sure no ``__del__`` will try again.

    petals' ``_ServerInferenceSession.__del__`` closes its stream through ``RemoteExpertWorker.run_coroutine``;
    when the garbage collector runs that on the worker's own event-loop thread, the loop waits on itself and
    every session of the process hangs (seen here: the bench froze mid-run). The bench closes sessions from
    its own threads and disables automatic GC while questions run (see runner.execute).
    """
    for server_session in server_sessions:
        if getattr(server_session, "_outputs_stream", None) is not None:
            try:
                server_session.close()
            except Exception:  # noqa: BLE001, S110 (the stream is gone either way)
                pass
            server_session._outputs_stream = server_session._inputs_queue = None


def run_batch(
    loaded,
    prompt_ids,
    path_indices: Sequence[int],
    cfg: MethodConfig,
    question_id: str,
    *,
    deadline: float | None = None,
    cancel: threading.Event | None = None,
) -> BatchOutput:
    """Generate len(path_indices) paths of one prompt as one batch (one inference session)."""
    import torch

    tok, model = loaded.tokenizer, loaded.model
    batch = len(path_indices)
    prompt_len = int(prompt_ids.shape[1])
    eos = tok.eos_token_id
    filler = tok.pad_token_id if tok.pad_token_id is not None else (eos or 0)
    generators = None
    if cfg.sample:
        generators = [torch.Generator().manual_seed(path_seed(cfg.seed, question_id, i)) for i in path_indices]
    new_ids: list[list[int]] = [[] for _ in range(batch)]
    finish: list[str | None] = [None] * batch
    started = time.monotonic()
    steps = 0
    servers: list[str] = []

    def check() -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if deadline is not None and time.monotonic() > deadline:
            raise QuestionTimeout(f"no answer within the per-question timeout after {steps} steps")

    if loaded.backend == "petals":
        session_cm = model.transformer.h.inference_session(max_length=prompt_len + cfg.max_new_tokens)
    else:
        session_cm = contextlib.nullcontext(None)
    with torch.inference_mode(), session_cm as session:
        past = None

        def forward(ids):
            nonlocal past
            if loaded.backend == "petals":
                out = model.transformer(input_ids=ids)
            else:
                out = model.transformer(input_ids=ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
            return model.lm_head(out.last_hidden_state[:, -1:, :])[:, -1, :].float()

        repeated = prompt_ids.repeat(batch, 1)
        chunk = max(1, MAX_TASK_TOKENS // batch)
        for start in range(0, prompt_len, chunk):  # prefill in tasks the servers accept
            check()
            logits = forward(repeated[:, start:start + chunk])
        while True:
            check()
            steps += 1
            if cfg.sample:
                scores = logits / cfg.temperature
                if cfg.top_k:
                    k = min(cfg.top_k, scores.shape[-1])
                    kth = torch.topk(scores, k, dim=-1).values[:, -1:]
                    scores = scores.masked_fill(scores < kth, float("-inf"))
                probs = torch.softmax(scores, dim=-1)
                chosen = [int(torch.multinomial(probs[r], 1, generator=generators[r])) for r in range(batch)]
            else:
                chosen = [int(t) for t in torch.argmax(logits, dim=-1)]
            for r, token in enumerate(chosen):
                if finish[r] is not None:
                    continue
                new_ids[r].append(token)
                if eos is not None and token == eos:
                    finish[r] = "eos"
                elif truncate_at_stop(tok.decode(new_ids[r], skip_special_tokens=True), cfg.stops)[1] is not None:
                    finish[r] = "stop"
            if all(f is not None for f in finish) or steps >= cfg.max_new_tokens:
                break
            feed = [filler if finish[r] is not None else chosen[r] for r in range(batch)]
            logits = forward(torch.tensor(feed, dtype=torch.long).view(batch, 1))
        if session is not None:
            servers = _served_peers(session)
            server_sessions = list(getattr(session, "_server_sessions", None) or [])
    if session is not None:
        _defuse(server_sessions)
    outputs = []
    for r, index in enumerate(path_indices):
        raw = tok.decode(new_ids[r], skip_special_tokens=True)
        text, _ = truncate_at_stop(raw, cfg.stops)
        outputs.append(PathOutput(index=index, raw=raw, text=text, tokens=len(new_ids[r]), finish=finish[r] or "length"))
    return BatchOutput(paths=outputs, prompt_tokens=prompt_len, steps=steps, seconds=time.monotonic() - started,
                       servers=servers)
