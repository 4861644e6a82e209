"""``petals-ops demo``: the whole toolkit on a private local swarm, no GPU or internet needed."""

import click

from petals_ops.cli.options import DIR_PATH


@click.command()
@click.option("--work-dir", type=DIR_PATH, default="runs/demo", show_default=True,
              help="Where the demo keeps its swarm state, model, bench run and reports.")
@click.option("--servers", default=2, show_default=True, type=click.IntRange(min=1))
def demo(work_dir, servers):
    """Bring up a local swarm, show its status, generate through it, and bring it down again."""
    from petals_ops.demo import run_demo

    run_demo(work_dir, servers=servers)
