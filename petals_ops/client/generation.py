"""Text generation from a loaded model (through the swarm or in-process alike), streamed as it comes.

Plain greedy or sampled text goes through transformers' ``generate``; with per-step hooks (the bench's
calculator) or tuned prompts it goes through the client's own token loop
(:func:`petals_ops.client.decoding.decode_batch`), which serves both backends alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from petals_ops.client.backends import Backend
from petals_ops.client.decoding import DecodeSpec, Sampling, decode_batch
from petals_ops.client.loading import LoadedModel
from petals_ops.util.errors import InputError


@dataclass
class Generation:
    prompt_tokens: int
    new_token_ids: list[list[int]]  # one list per returned sequence
    texts: list[str]
    seconds: float
    # what the hooks noted for sequence 0 (the calculator's bench.hooks.Intervention)
    interventions: list[Any] = field(default_factory=list)

    @property
    def new_tokens(self) -> int:
        return sum(len(ids) for ids in self.new_token_ids)


class StepClock:
    """A transformers streamer that only notes when each token arrives. Its first call carries the prompt,
    so :meth:`gaps` (token to token, the prefill left out) are the decoding steps' times."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times[1:], self.times[2:])]


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
    hooks: Sequence[Any] = (),
    **generate_kwargs,
) -> Generation:
    """Generate from ``prompt``; several sequences run as one batch of the same prompt (no padding).

    ``hooks``: per-step hooks of the token loop (:class:`petals_ops.client.decoding.Hook`, e.g. the bench's
    calculator); with hooks or tuned prompts the text is handed to ``on_text`` at the end.
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
    if hooks or loaded.pre_seq_len:  # tuned prompts: the token loop serves both backends alike
        return _generate_in_loop(loaded, input_ids, max_new_tokens=max_new_tokens, sample=sample,
                                 temperature=temperature, top_k=top_k, seed=seed,
                                 num_return_sequences=num_return_sequences, on_text=on_text, hooks=hooks)
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


def _generate_in_loop(loaded: LoadedModel, input_ids, *, max_new_tokens: int, sample: bool,
                      temperature: float, top_k: int | None, seed: int | None,
                      num_return_sequences: int, on_text: Callable[[str], None] | None,
                      hooks: Sequence[Any] = ()) -> Generation:
    """``generate`` through the client's token loop, with hooks or tuned prompts."""
    import secrets

    if sample:
        sampling = Sampling(temperature, top_k or None, secrets.randbits(63) if seed is None else seed)
    else:
        sampling = Sampling()
    spec = DecodeSpec(sampling, max_new_tokens=max_new_tokens, hooks=tuple(hooks))
    out = decode_batch(Backend(loaded), input_ids, list(range(num_return_sequences)), spec, "generate")
    if on_text is not None:
        on_text(out.paths[0].raw)
    return Generation(prompt_tokens=int(input_ids.shape[1]), new_token_ids=[p.ids for p in out.paths],
                      texts=[p.raw for p in out.paths], seconds=out.seconds,
                      interventions=list(out.paths[0].interventions))
