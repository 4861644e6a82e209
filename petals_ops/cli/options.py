"""Click options shared by the commands that talk to a swarm."""

import click

from petals_ops.client.models import MAX_BLOCKS
from petals_ops.lab.local_swarm import default_run_dir


def swarm_target_options(func=None, *, multiple_models: bool = False):
    """--initial-peers/--model/--dht-prefix/--num-blocks/--swarm-dir; the local swarm when none is given.

    ``@swarm_target_options(multiple_models=True)`` makes --model repeatable (a tuple, possibly empty).
    """
    if func is None:
        return lambda f: swarm_target_options(f, multiple_models=multiple_models)
    options = [
        click.option(
            "--initial-peers", "initial_peers", multiple=True, envvar="PETALS_OPS_INITIAL_PEERS",
            help="Multiaddr(s) of the swarm's DHT (repeat or comma-separate). Default: the local swarm's.",
        ),
        click.option(
            "--model", "model", envvar="PETALS_OPS_MODEL", multiple=multiple_models,
            help="Hub name (bigscience/bloom) or model directory"
            + (" (repeat for several models)" if multiple_models else "")
            + ". Default: the local swarm's model.",
        ),
        click.option("--dht-prefix", help="Override the DHT prefix the blocks are announced under."),
        click.option("--num-blocks", type=click.IntRange(min=1, max=MAX_BLOCKS),
                     help="Number of blocks, if the swarm does not say."),
        click.option(
            "--swarm-dir", type=click.Path(file_okay=False), default=None, envvar="PETALS_OPS_SWARM_DIR",
            help=f"Run directory of the local swarm [default: {default_run_dir()}].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


class PositiveNumber(click.ParamType):
    """A finite number > 0 (seconds, a temperature). click.FloatRange lets nan and inf through (every
    comparison with nan is false), and a 0 or negative timeout only fails later, after network work."""

    name = "number"

    def convert(self, value, param, ctx):
        import math

        number = value if isinstance(value, float) else click.FLOAT.convert(value, param, ctx)
        if not (math.isfinite(number) and number > 0):
            self.fail(f"{value!r} is not a finite number > 0", param, ctx)
        return number


POSITIVE = PositiveNumber()
AT_LEAST_ONE = click.IntRange(min=1)
