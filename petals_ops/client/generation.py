"""Text generation through the swarm (petals client) or in-process (transformers), one code path.

Both backends return the same :class:`LoadedModel`, so callers (``generate``, the bench) do not care
where the blocks run. The petals client is given a bounded ``max_retries``: by default it retries a
missing block forever.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from petals_ops.util.errors import InputError, OpsError
from petals_ops.client.models import ModelRef

DEFAULT_MAX_RETRIES = 3
# What a petals server answers when a session is longer than its --inference_max_length.
SERVER_LENGTH_LIMIT_RE = re.compile(r"Cannot allocate KV cache for (\d+) tokens, max = (\d+)")
LENGTH_FIX = "shorten the prompt or lower --max-new-tokens"


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    backend: str  # "petals" or "local"
    ref: ModelRef
    initial_peers: list[str] = field(default_factory=list)
    pre_seq_len: int = 0  # tuned prompts the model prepends itself (petals_ops.tune): sessions make room
    prompts_id: str | None = None  # id of the tuned prompts loaded (client.tuned_prompts), if any

    def close(self) -> None:
        """Release the swarm connection (DHT, p2pd) of a petals backend; a no-op for local."""
        if self.backend == "petals" and self.model is not None:
            from petals_ops.client import door as petals_door

            petals_door.close_client(self.model)
            self.model = None

    def __enter__(self) -> "LoadedModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Generation:
    prompt_tokens: int
    new_token_ids: list[list[int]]  # one list per returned sequence
    texts: list[str]
    seconds: float
    # with calculator: decoding.Intervention of sequence 0
    interventions: list[Any] = field(default_factory=list)

    @property
    def new_tokens(self) -> int:
        return sum(len(ids) for ids in self.new_token_ids)


def _require_local_checkpoint(ref: ModelRef) -> str:
    if ref.path is None:
        raise InputError(
            f"model {ref.name} is not on this machine; the client needs its embeddings and tokenizer",
            fix="pass --model DIR of a local checkpoint",
        )
    return ref.path


def load_tokenizer(ref: ModelRef):
    """The checkpoint's tokenizer alone: cheap, and needs no swarm (usage checks run before connecting)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_require_local_checkpoint(ref))


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


def load_swarm_model(
    ref: ModelRef,
    initial_peers: Sequence[str],
    *,
    max_retries: int = DEFAULT_MAX_RETRIES,
    request_timeout: float = 60.0,
    **model_kwargs,
) -> LoadedModel:
    """Connect to the swarm and load the client side (embeddings, LM head) of ``ref``.

    ``model_kwargs``: more for petals' ``from_pretrained`` (``tuning_mode``, ``pre_seq_len``: tune)."""
    from petals_ops.client import door
    from transformers import AutoTokenizer

    path = _require_local_checkpoint(ref)
    tokenizer = AutoTokenizer.from_pretrained(path)  # before connecting: a failure here leaks nothing
    logging.getLogger("petals").setLevel(logging.WARNING)  # keep INFO chatter out of streamed output
    try:
        model = door.AutoDistributedModelForCausalLM.from_pretrained(
            path,
            initial_peers=list(initial_peers),
            dht_prefix=ref.dht_prefix,
            max_retries=max_retries,
            request_timeout=request_timeout,
            connect_timeout=5,
            daemon_startup_timeout=30,
            show_route=False,
            **model_kwargs,
        )
    except Exception as e:
        if "bootstrap" in str(e) or "multiaddr" in str(e) or "Daemon failed" in str(e):
            raise OpsError(
                f"cannot reach the swarm at initial peers {' '.join(initial_peers)} "
                f"({' '.join(str(e).split())[-160:]})",
                fix="check --initial-peers and that the DHT is up",
            ) from e
        raise
    return LoadedModel(model.eval(), tokenizer, "petals", ref, list(initial_peers))


def load_local_model(ref: ModelRef) -> LoadedModel:
    """The same checkpoint in-process with transformers (no swarm), for comparison and swarm-less runs."""
    from petals_ops.client import door as petals_door  # noqa: F401  (one import order for every process)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _require_local_checkpoint(ref)
    import torch

    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    return LoadedModel(model.eval(), AutoTokenizer.from_pretrained(path), "local", ref)


class _CallbackStreamer:
    """A transformers streamer that hands each newly decoded piece of text (sequence 0) to ``on_text``."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.ids: list[int] = []
        self.printed = 0
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.ids.extend(value.reshape(value.shape[0], -1)[0].tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for complete UTF-8 characters
            self.on_text(text[self.printed:])
            self.printed = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if len(text) > self.printed:
            self.on_text(text[self.printed:])


def generate(
    loaded: LoadedModel,
    prompt: str,
    *,
    max_new_tokens: int = 32,
    sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    num_return_sequences: int = 1,
    seed: int | None = None,
    on_text: Callable[[str], None] | None = None,
    calculator: bool = False,
    **generate_kwargs,
) -> Generation:
    """Generate from ``prompt``; several sequences run as one batch of the same prompt (no padding).

    ``calculator``: decode with the bench's token loop (:func:`petals_ops.client.decoding.decode_batch`),
    which forces the exact result after ``<expression> =``; the text is handed to ``on_text`` at the end.
    """
    import torch

    if max_new_tokens < 1:
        raise InputError(f"--max-new-tokens {max_new_tokens} must be at least 1",
                         fix="use --max-new-tokens 32")
    if sample and temperature <= 0:
        raise InputError(f"--temperature {temperature} must be > 0 when sampling",
                         fix="use --temperature 0.7")
    tok = loaded.tokenizer
    input_ids = tok(prompt, return_tensors="pt")["input_ids"]
    if input_ids.shape[1] == 0:
        raise InputError("the prompt is empty", fix="pass some text")
    if calculator or loaded.pre_seq_len:  # tuned prompts: the bench's loop serves both backends alike
        return _generate_with_calculator(loaded, input_ids, max_new_tokens=max_new_tokens, sample=sample,
                                         temperature=temperature, top_k=top_k, seed=seed,
                                         num_return_sequences=num_return_sequences, on_text=on_text,
                                         calculator=calculator)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=sample, pad_token_id=tok.pad_token_id,
                  **generate_kwargs)
    if sample:
        kwargs.update(temperature=temperature, top_k=top_k or 0, num_return_sequences=num_return_sequences)
    elif num_return_sequences > 1:
        input_ids = input_ids.repeat(num_return_sequences, 1)
    if on_text is not None:
        kwargs["streamer"] = _CallbackStreamer(tok, on_text)
    if seed is not None:
        torch.manual_seed(seed)
    started = time.monotonic()
    with torch.inference_mode():
        out = loaded.model.generate(input_ids, **kwargs)
    seconds = time.monotonic() - started
    new_ids = [row[input_ids.shape[1]:].tolist() for row in out]
    return Generation(
        prompt_tokens=int(input_ids.shape[1]),
        new_token_ids=new_ids,
        texts=[tok.decode(ids, skip_special_tokens=True) for ids in new_ids],
        seconds=seconds,
    )


def _generate_with_calculator(loaded: LoadedModel, input_ids, *, max_new_tokens: int, sample: bool,
                              temperature: float, top_k: int | None, seed: int | None,
                              num_return_sequences: int, on_text: Callable[[str], None] | None,
                              calculator: bool = True) -> Generation:
    """``generate`` through the bench's loop, with the calculator or tuned prompts (no stop strings)."""
    import secrets

    from petals_ops.client.backends import Backend
    from petals_ops.client.decoding import DecodeSpec, Sampling, decode_batch

    if sample:
        sampling = Sampling(temperature, top_k or None, secrets.randbits(63) if seed is None else seed)
    else:
        sampling = Sampling()
    spec = DecodeSpec(sampling, max_new_tokens=max_new_tokens, stops=(), calculator=calculator)
    out = decode_batch(Backend(loaded), input_ids, list(range(num_return_sequences)), spec, "generate")
    if on_text is not None:
        on_text(out.paths[0].raw)
    return Generation(prompt_tokens=int(input_ids.shape[1]), new_token_ids=[p.ids for p in out.paths],
                      texts=[p.raw for p in out.paths], seconds=out.seconds,
                      interventions=list(out.paths[0].interventions))
