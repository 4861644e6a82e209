"""Where a decoding loop's forward passes run: through the swarm (petals) or in this process (local).

One interface for every method of the bench (and later tuning and the calculator): a :class:`Backend`
opens a :class:`DecodeSession` for a batch, whose ``forward(ids)`` returns the next-token logits of each
row; the caller owns the token loop. The petals client's rough edges live here and nowhere else:

- session internals: which servers served a session, and ending its streams ourselves, all at once and
  without waiting for the servers' replies (``door.end_server_sessions``; ``_defuse`` is the safety net);
- banning dead peers named by a failed attempt (petals keeps routing to a dead server until its DHT
  record expires);
- the garbage-collector deadlock (a leftover session's ``__del__`` run on the client's own event-loop
  thread waits on that loop for ever): automatic GC is off while work runs, and :meth:`Backend.collect`
  collects from the caller's thread instead; what is alive when work starts (the model, the libraries) is
  frozen out of those collections, which would otherwise scan it all, holding the GIL for ~0.5 s per
  question and stalling every other question's thread and the client's event loop;
- a session longer than the servers' ``inference_max_length``: checked before any network work when the
  limit is known, and the servers' refusal turned into a usage error when it is not.

Heavy imports (torch, petals) happen inside functions.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from petals_ops.client import loading
from petals_ops.client.models import ModelRef
from petals_ops.client.options import BACKENDS
from petals_ops.client.tuned_prompts import open_with_prompts
from petals_ops.util.errors import InputError

# A Petals server refuses a step of more than --max_batch_size tokens (batch x new tokens; 2048 by default
# for BLOOM): prompts are prefilled in chunks of at most this many tokens across the batch.
MAX_TASK_TOKENS = 2048
# What a petals server answers when a session is longer than its --inference_max_length.
SERVER_LENGTH_LIMIT_RE = re.compile(r"Cannot allocate KV cache for (\d+) tokens, max = (\d+)")
LENGTH_FIX = "shorten the prompt or lower --max-new-tokens"
PEER_ID_RE = re.compile(r"\b(Qm[1-9A-HJ-NP-Za-km-z]{44}|12D3KooW[1-9A-HJ-NP-Za-km-z]{44})\b")


class DecodeSession:
    """One batch's decoding state: feed token ids, get the last position's logits ``[batch, vocab]``."""

    def __init__(self, loaded, session=None):
        self._loaded = loaded
        self._session = session  # petals InferenceSession, or None for the local KV cache
        self._past = None
        self.forwards = 0  # requests sent through the route (prefill chunks and decoding steps): its cost

    def forward(self, ids):
        model = self._loaded.model
        self.forwards += 1
        if self._session is not None:
            out = model.transformer(input_ids=ids)
        else:
            out = model.transformer(input_ids=ids, past_key_values=self._past, use_cache=True)
            self._past = out.past_key_values
        return model.lm_head(out.last_hidden_state[:, -1:, :])[:, -1, :].float()

    def prefill(self, ids):
        """Feed a whole prompt (``[batch, length]``) in tasks the servers accept; the last logits."""
        # the first chunk also carries the tuned prompts the model prepends itself (petals_ops.tune)
        chunk = max(1, MAX_TASK_TOKENS // int(ids.shape[0]) - self._loaded.pre_seq_len)
        logits = None
        for start in range(0, int(ids.shape[1]), chunk):
            logits = self.forward(ids[:, start:start + chunk])
        return logits

    @property
    def served_peers(self) -> list[str]:
        peers = []
        for server_session in getattr(self._session, "_server_sessions", None) or []:
            peer = getattr(getattr(server_session, "span", None), "peer_id", None)
            if peer is not None:
                peers.append(peer.to_base58() if hasattr(peer, "to_base58") else str(peer))
        return peers


class Backend:
    """A loaded model plus how to decode with it. Use as a context manager; :meth:`close` releases it."""

    def __init__(self, loaded):
        self.loaded = loaded

    @property
    def name(self) -> str:
        return self.loaded.backend

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def ref(self) -> ModelRef:
        return self.loaded.ref

    @contextlib.contextmanager
    def session(self, batch: int, max_length: int) -> Iterator[DecodeSession]:
        """A fresh decoding session for ``batch`` rows of at most ``max_length`` tokens."""
        import torch

        with torch.inference_mode():
            if self.name != "petals":
                yield DecodeSession(self.loaded)
                return
            from petals_ops.client import door

            server_sessions: list = []
            # tuned prompts (petals_ops.tune) take pre_seq_len positions of the session
            with self.loaded.model.transformer.h.inference_session(
                    max_length=max_length + self.loaded.pre_seq_len) as session:
                try:
                    yield DecodeSession(self.loaded, session)
                finally:
                    server_sessions = list(getattr(session, "_server_sessions", None) or [])
                    door.end_server_sessions(server_sessions,
                                             self.loaded.model.transformer.h.sequence_manager.config.request_timeout)
            _defuse(server_sessions)

    def after_failure(self, error: BaseException) -> list[str]:
        """Tell the client to avoid the servers a failed attempt names; returns the banned peer ids."""
        if self.name != "petals" or self.loaded.model is None:
            return []
        return _ban_failed_peers(self.loaded.model, error)

    @contextlib.contextmanager
    def quiet_gc(self) -> Iterator[None]:
        """Automatic GC off while work runs (see the module docstring); collected once at the end."""
        was_enabled = gc.isenabled()
        gc.disable()
        gc.freeze()  # what is alive now (the model, the libraries) is never scanned by the collections below
        try:
            yield
        finally:
            gc.unfreeze()
            gc.collect()
            if was_enabled:
                gc.enable()

    @contextlib.contextmanager
    def torch_threads(self, threads: int | None) -> Iterator[None]:
        """torch's intra-op threads for this process while work runs (None: left as they are); restored
        after. See :func:`client_threads`."""
        import torch

        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    @staticmethod
    def collect() -> None:
        """Collect garbage from the calling (work) thread, never from the client's event loop."""
        gc.collect()

    def close(self) -> None:
        self.loaded.close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def client_threads(concurrency: int, servers_here: bool) -> int:
    """torch threads for the client's own compute (embeddings, LM head, sampling) with ``concurrency``
    questions in flight: each gets its share of the cores, and 1 when the swarm's servers run on this
    machine (the lab swarm), whose cores they need. A split op waits for its slowest thread: on
    oversubscribed cores every small op then waits for a time slice (measured in docs/bench.md, "What SC
    costs, and how to pay less": 23x slower steps of 10 rows at 2 threads than at 1 on a loaded 2-core
    machine)."""
    if servers_here:
        return 1
    return max(1, (os.cpu_count() or 1) // max(1, concurrency))


def open_backend(kind: str, ref: ModelRef, initial_peers: Sequence[str] = (), *, max_retries: int = 3,
                 request_timeout: float = 60.0, prompts=None) -> Backend:
    """Load ``ref`` for decoding through the swarm (``petals``) or in this process (``local``);
    ``prompts``: tuned prompts (:class:`petals_ops.client.tuned_prompts.TunedPrompts`) the model
    prepends itself."""
    if kind not in BACKENDS:
        raise InputError(f"--backend {kind} is unknown", fix="use petals or local")
    if prompts is not None:
        return Backend(open_with_prompts(kind, ref, initial_peers, prompts, max_retries=max_retries,
                                         request_timeout=request_timeout))
    if kind == "local":
        return Backend(loading.load_local_model(ref))
    return Backend(loading.load_swarm_model(ref, initial_peers, max_retries=max_retries,
                                            request_timeout=request_timeout))


def _ban_failed_peers(model, error: BaseException) -> list[str]:
    """The peers an error names (anywhere in its chain), banned (see :func:`door.ban_peers`)."""
    texts, seen = [], error
    while seen is not None and len(texts) < 5:
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    peers = sorted(set(PEER_ID_RE.findall(" ".join(texts))))
    if peers:
        from petals_ops.client import door

        door.ban_peers(model, peers)
    return peers


def _defuse(server_sessions: Sequence[Any]) -> None:
    """Close what a session left open, and make sure no ``__del__`` will try again.

    petals' ``_ServerInferenceSession.__del__`` closes its stream through
    ``RemoteExpertWorker.run_coroutine``; when the garbage collector runs that on the worker's own
    event-loop thread, the loop waits on itself and every session of the process hangs (seen here:
    the bench froze mid-run).
    """
    for server_session in server_sessions:
        if getattr(server_session, "_outputs_stream", None) is not None:
            try:
                server_session.close()
            except Exception:  # noqa: BLE001, S110 (the stream is gone either way)
                pass
            server_session._outputs_stream = server_session._inputs_queue = None


def require_length_fits(prompt_tokens: int, max_new_tokens: int, limit: int | None, *,
                        what: str = "the prompt") -> None:
    """A session longer than the servers' ``inference_max_length`` is refused by every server, after a
    storm of retries: when the limit is known, say so before any network work."""
    if limit is not None and prompt_tokens + max_new_tokens > limit:
        raise InputError(
            f"{what} ({prompt_tokens} tokens) + --max-new-tokens {max_new_tokens} exceeds the servers' "
            f"inference_max_length {limit}",
            fix=LENGTH_FIX,
        )


def length_error_from(error: BaseException) -> InputError | None:
    """The servers' refusal of a too-long session (anywhere in the exception chain) as a usage error."""
    seen, depth = error, 0
    while seen is not None and depth < 8:
        match = SERVER_LENGTH_LIMIT_RE.search(str(seen))
        if match:
            return InputError(
                f"the servers refused a session of {match[1]} tokens: "
                f"their inference_max_length is {match[2]}",
                fix=LENGTH_FIX,
            )
        seen, depth = seen.__cause__ or seen.__context__, depth + 1
    return None
