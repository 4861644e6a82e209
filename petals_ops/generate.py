"""``petals-ops generate`` as a library call: text from a prompt, through the swarm or in this process.

:func:`run_generate` does what the command does (resolve the target, check the length and the swarm's
coverage before connecting, open the backend, generate, turn a swarm failure into one line); the CLI
only parses options and prints. It sits beside the bench and tuning, above the client layer: the
calculator is the bench's hook (:mod:`petals_ops.bench.hooks`), passed into the client's token loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from petals_ops.client.options import ClientOptions
from petals_ops.util.errors import OpsError, one_line


@dataclass
class GenerateParams:
    prompt: str
    client: ClientOptions = field(default_factory=ClientOptions)
    max_new_tokens: int = 32
    sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    calculator: bool = False  # force exact results after '<expression> =' (the bench's calculator hook)
    tuned_prompts: str | None = None  # a tune run dir or prompt file (petals_ops.client.tuned_prompts)


def run_generate(params: GenerateParams, *, on_text: Callable[[str], None] | None = None):
    """Generate from ``params.prompt``; returns a :class:`petals_ops.client.generation.Generation`.

    ``on_text`` gets the text as it comes (at the end with the calculator or tuned prompts)."""
    from petals_ops.client import generation
    from petals_ops.client.backends import length_error_from, open_backend, require_length_fits
    from petals_ops.client.loading import load_tokenizer
    from petals_ops.lab.target import resolve_for_backend
    from petals_ops.swarm.health import take_snapshot
    from petals_ops.swarm.reachability import probe_snapshot

    opts = params.client.validate()
    target = resolve_for_backend(opts)
    tuned = None
    if params.tuned_prompts:
        from petals_ops.client.tuned_prompts import load_prompts, require_compatible

        tuned = load_prompts(params.tuned_prompts)
        require_compatible(tuned, target.model)
    hooks = ()
    if params.calculator:
        from petals_ops.bench.hooks import decode_hooks

        hooks = decode_hooks((), calculator=True)  # no stop strings: generate writes until the budget
    if opts.backend == "petals":
        prompt_tokens = len(load_tokenizer(target.model)(params.prompt)["input_ids"])
        prompt_tokens += tuned.pre_seq_len if tuned is not None else 0  # the session holds them too
        require_length_fits(prompt_tokens, params.max_new_tokens, target.max_length)
        take_snapshot(target.initial_peers, target.model).require_full_coverage()
    try:
        with open_backend(opts.backend, target.model, target.initial_peers, prompts=tuned,
                          **opts.client_kwargs()) as backend:
            return generation.generate(backend.loaded, params.prompt, max_new_tokens=params.max_new_tokens,
                                       sample=params.sample, temperature=params.temperature,
                                       top_k=params.top_k, seed=params.seed, on_text=on_text, hooks=hooks)
    except Exception as e:
        # a closed stdout ('generate | head -c1') is the reader's doing, not the swarm's: click ends quietly
        if isinstance(e, (OpsError, BrokenPipeError)) or opts.backend == "local":
            raise
        too_long = length_error_from(e)
        if too_long is not None:
            raise too_long from e
        # name the blocks if they are gone: probed, since a crashed server's record stays ONLINE for minutes
        probe_snapshot(target.initial_peers, target.model, timeout=5.0).require_full_coverage()
        raise OpsError(f"generation through the swarm failed: {one_line(e, 200)}",
                       fix="check 'petals-ops swarm status' and retry") from e
