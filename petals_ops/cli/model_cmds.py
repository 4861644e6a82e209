"""``petals-ops model``: make models for the local swarm."""

import click

from petals_ops.cli.options import DIR_PATH, SEED
from petals_ops.cli.terminal import terminal

# Per skill: (layers, hidden, heads, vocab, DHT prefix). The arithmetic defaults reproduce the checkpoint
# the project ships (petals_ops/data/models/tiny-bloom-arith).
SKILL_DEFAULTS = {
    "none": (4, 64, 4, 1024, "tiny-bloom-petals"),
    "arithmetic": (4, 128, 8, 400, "tiny-bloom-arith"),
}


@click.group()
def model():
    """Make and inspect models for the local swarm."""


@model.command("tiny")
@click.argument("directory", type=DIR_PATH)
@click.option("--skill", type=click.Choice(list(SKILL_DEFAULTS)), default="none", show_default=True,
              help="none: random weights (noise; exercises the machinery). arithmetic: trained in-process on "
                   "synthetic GSM-style word problems (a few minutes on 2 cores) so the bench measures "
                   "real effects.")
@click.option("--layers", default=None, type=int, help="Transformer blocks (what servers hold) [default: 4].")
@click.option("--hidden", default=None, type=int, help="Hidden size [default: 64; arithmetic: 128].")
@click.option("--heads", default=None, type=int,
              help="Attention heads, must divide --hidden [default: 4; arithmetic: 8].")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Same seed, same weights and tokenizer.")
@click.option("--steps", default=None, type=int,
              help="arithmetic: training steps [default: the shipped model's].")
@click.option("--dht-prefix", default=None,
              help="Prefix servers announce blocks under "
                   "[default: tiny-bloom-petals; arithmetic: tiny-bloom-arith].")
def tiny(directory, skill, layers, hidden, heads, seed, steps, dht_prefix):
    """Write a tiny BLOOM to DIRECTORY, offline and deterministic for a seed.

    The layout is what Petals servers load (BloomModel keys h.{i}.*), whatever the skill. The
    project ships the arithmetic model this command makes with its defaults (--skill arithmetic):
    petals_ops/data/models/tiny-bloom-arith, with its held-out set (--data arith:test in the bench).
    """
    from petals_ops.lab.tiny_model import TinyModelSpec, make_tiny_bloom

    d_layers, d_hidden, d_heads, vocab, d_prefix = SKILL_DEFAULTS[skill]
    def given(value, default):  # 0 is a value the user gave (and is refused by validate), not "unset"
        return default if value is None else value

    spec = TinyModelSpec(layers=given(layers, d_layers), hidden=given(hidden, d_hidden),
                         heads=given(heads, d_heads), vocab_size=vocab,
                         seed=seed, dht_prefix=d_prefix if dht_prefix is None else dht_prefix, skill=skill)
    train_spec = None
    if skill == "arithmetic":
        from petals_ops.lab.tiny_train import TrainSpec

        train_spec = TrainSpec(seed=seed) if steps is None else TrainSpec(seed=seed, steps=steps)
    elif steps is not None:
        from petals_ops.util.errors import InputError

        raise InputError("--steps needs --skill arithmetic (a random model is not trained)",
                         fix="drop --steps")
    with terminal.progress("training", fields=("loss", "tok/s"), every=50) as bar:
        def step(s) -> None:
            bar.update(s.step, s.steps, loss=f"{s.loss:.3f}", **{"tok/s": f"{s.tokens_per_second:.0f}"},
                       line=f"[{s.step}/{s.steps}] loss {s.loss:.3f}, {s.tokens_per_second:.0f} tokens/s, "
                            f"ETA {s.eta:.0f} s")

        path = make_tiny_bloom(directory, spec, train_spec, on_step=step)
    terminal.info(f"tiny BLOOM ({skill}) with {spec.layers} blocks (hidden {spec.hidden}, seed {seed}, "
                  f"DHT prefix {spec.dht_prefix}) written")
    terminal.echo(str(path))
