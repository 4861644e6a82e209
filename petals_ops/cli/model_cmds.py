"""``petals-ops model``: make models for the local swarm."""

import click

from petals_ops.output import info


@click.group()
def model():
    """Make and inspect models for the local swarm."""


@model.command("tiny")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--layers", default=4, show_default=True, type=int, help="Transformer blocks (what servers hold).")
@click.option("--hidden", default=64, show_default=True, type=int, help="Hidden size.")
@click.option("--heads", default=4, show_default=True, type=int, help="Attention heads (must divide --hidden).")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same weights and tokenizer.")
@click.option("--dht-prefix", default="tiny-bloom-petals", show_default=True, help="Prefix servers announce blocks under.")
def tiny(directory, layers, hidden, heads, seed, dht_prefix):
    """Write a tiny BLOOM to DIRECTORY, offline and deterministic for a seed.

    The weights are random (its answers are noise by design); it exists so a real Petals swarm runs
    on any laptop. The layout is what Petals servers load (BloomModel keys h.{i}.*).
    """
    from petals_ops.tiny_model import TinyModelSpec, make_tiny_bloom

    spec = TinyModelSpec(layers=layers, hidden=hidden, heads=heads, seed=seed, dht_prefix=dht_prefix)
    path = make_tiny_bloom(directory, spec)
    info(f"tiny BLOOM with {layers} blocks (hidden {hidden}, seed {seed}, DHT prefix {dht_prefix}) written")
    click.echo(str(path))
