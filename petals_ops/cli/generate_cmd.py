"""``petals-ops generate``: the smallest client, text through the swarm streamed to the terminal."""

import sys

import click

from petals_ops.cli.options import AT_LEAST_ONE, POSITIVE, swarm_target_options
from petals_ops.util.output import info
from petals_ops.util.safe_text import printable


@click.command()
@swarm_target_options
@click.argument("prompt")
@click.option("--max-new-tokens", default=32, show_default=True, type=AT_LEAST_ONE)
@click.option("--sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--temperature", default=1.0, show_default=True, type=POSITIVE, help="With --sample.")
@click.option("--top-k", default=None, type=click.IntRange(min=0),
              help="With --sample: keep the k most likely tokens.")
@click.option("--seed", default=None, type=int, help="Seed for --sample.")
@click.option("--max-retries", default=3, show_default=True, type=click.IntRange(min=0),
              help="Client retries per failed step before giving up (petals' default is forever).")
@click.option("--backend", type=click.Choice(["petals", "local"]), default="petals", show_default=True,
              help="petals: through the swarm; local: the same checkpoint in this process.")
@click.option("--calculator", is_flag=True,
              help="Force the exact result after an arithmetic expression and '=' (the bench's decoding "
                   "loop; the text is printed at the end, the interventions on stderr).")
@click.option("--tuned-prompts", default=None, type=click.Path(),
              help="A 'petals-ops tune' run dir (or prompt file): the model prepends those prompts "
                   "(the text is printed at the end).")
def generate(initial_peers, model, dht_prefix, num_blocks, swarm_dir, prompt, max_new_tokens, sample,
             temperature, top_k, seed, max_retries, backend, calculator, tuned_prompts):
    """Generate text from PROMPT through the swarm (the local one by default), streamed to stdout."""
    from petals_ops.client import generation
    from petals_ops.util.errors import OpsError
    from petals_ops.swarm.health import take_snapshot
    from petals_ops.lab.target import resolve_for_backend

    target = resolve_for_backend(backend, initial_peers, model, dht_prefix=dht_prefix, num_blocks=num_blocks,
                                 run_dir=swarm_dir)

    def write(text):
        sys.stdout.write(printable(text, keep_newlines=True))  # tokens are a remote swarm's output
        sys.stdout.flush()

    tuned = None
    if tuned_prompts:
        from petals_ops.client.tuned_prompts import load_prompts, open_with_prompts, require_compatible

        tuned = load_prompts(tuned_prompts)
        require_compatible(tuned, target.model)
    if backend == "local":
        loaded = generation.load_local_model(target.model) if tuned is None else \
            open_with_prompts("local", target.model, [], tuned)
    else:
        prompt_tokens = len(generation.load_tokenizer(target.model)(prompt)["input_ids"])
        prompt_tokens += tuned.pre_seq_len if tuned is not None else 0  # the session holds them too
        generation.require_length_fits(prompt_tokens, max_new_tokens, target.max_length)
        take_snapshot(target.initial_peers, target.model).require_full_coverage()
        loaded = generation.load_swarm_model(target.model, target.initial_peers, max_retries=max_retries) \
            if tuned is None else open_with_prompts("petals", target.model, target.initial_peers, tuned,
                                                    max_retries=max_retries)
    try:
        with loaded:
            result = generation.generate(loaded, prompt, max_new_tokens=max_new_tokens, sample=sample,
                                         temperature=temperature, top_k=top_k, seed=seed, on_text=write,
                                         calculator=calculator)
    except Exception as e:
        if isinstance(e, OpsError) or backend == "local":
            raise
        too_long = generation.length_error_from(e)
        if too_long is not None:
            raise too_long from e
        # name the blocks if they are gone
        take_snapshot(target.initial_peers, target.model).require_full_coverage()
        raise OpsError(f"generation through the swarm failed: {' '.join(str(e).split())[:200]}",
                       fix="check 'petals-ops swarm status' and retry") from e
    write("\n")
    for i in result.interventions:
        own = "" if i.model_wrong is None else \
            f" (the model wrote{'' if i.model_wrong else ' it too'}: {i.model.strip()!r})"
        info(f"calculator at token {i.position}: {i.expression} = {i.result}{own}")
    tps = result.new_tokens / result.seconds if result.seconds else 0.0
    info(f"{result.new_tokens} tokens in {result.seconds:.2f} s ({tps:.1f} tokens/s, {backend})")
