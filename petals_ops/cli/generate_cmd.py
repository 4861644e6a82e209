"""``petals-ops generate``: the smallest client, text through the swarm streamed to the terminal.

Parses options and calls :func:`petals_ops.generate.run_generate`; prints what it returns.
"""

import sys

import click

from petals_ops.cli.options import AT_LEAST_ONE, POSITIVE, SEED, client_options
from petals_ops.util.output import info
from petals_ops.util.safe_text import printable


@click.command()
@client_options
@click.argument("prompt")
@click.option("--max-new-tokens", default=32, show_default=True, type=AT_LEAST_ONE)
@click.option("--sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--temperature", default=1.0, show_default=True, type=POSITIVE, help="With --sample.")
@click.option("--top-k", default=None, type=click.IntRange(min=0),
              help="With --sample: keep the k most likely tokens.")
@click.option("--seed", default=None, type=SEED, help="Seed for --sample.")
@click.option("--calculator", is_flag=True,
              help="Force the exact result after an arithmetic expression and '=' (the bench's decoding "
                   "loop; the text is printed at the end, the interventions on stderr).")
@click.option("--tuned-prompts", default=None, type=click.Path(),
              help="A 'petals-ops tune' run dir (or prompt file): the model prepends those prompts "
                   "(the text is printed at the end).")
def generate(client, prompt, max_new_tokens, sample, temperature, top_k, seed, calculator, tuned_prompts):
    """Generate text from PROMPT through the swarm (the local one by default), streamed to stdout."""
    from petals_ops.generate import GenerateParams, run_generate

    def write(text):
        sys.stdout.write(printable(text, keep_newlines=True))  # tokens are a remote swarm's output
        sys.stdout.flush()

    params = GenerateParams(prompt=prompt, client=client, max_new_tokens=max_new_tokens, sample=sample,
                            temperature=temperature, top_k=top_k, seed=seed, calculator=calculator,
                            tuned_prompts=tuned_prompts)
    result = run_generate(params, on_text=write)
    write("\n")
    for i in result.interventions:
        own = "" if i.model_wrong is None else \
            f" (the model wrote{'' if i.model_wrong else ' it too'}: {i.model.strip()!r})"
        info(f"calculator at token {i.position}: {i.expression} = {i.result}{own}")
    tps = result.new_tokens / result.seconds if result.seconds else 0.0
    info(f"{result.new_tokens} tokens in {result.seconds:.2f} s ({tps:.1f} tokens/s, {client.backend})")
