"""Entry point of the ``petals-ops`` command.

Subcommand groups live in their own modules and are imported here; none of them imports torch,
transformers, hivemind or petals at module level, so ``petals-ops --help`` stays fast.
"""

import os
import sys

import click

from petals_ops import __version__
from petals_ops.cli.terminal import terminal
from petals_ops.util.errors import OpsError, redact


class OpsGroup(click.Group):
    """A click group that turns :class:`OpsError` into one stderr line and its exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OpsError as e:
            if os.environ.get("PETALS_OPS_DEBUG") or (ctx.obj or {}).get("debug"):
                raise
            ctx.exit(terminal.fail(e))
        except click.UsageError as e:
            # click's own usage error is four lines (usage, hint, blank, "Error: ..."); ours is one, the
            # same as every other bad input, and redacted: it quotes the value given.
            if os.environ.get("PETALS_OPS_DEBUG") or (ctx.obj or {}).get("debug"):
                raise
            what = " ".join(e.format_message().split()).rstrip(".")
            where = e.ctx.command_path if e.ctx is not None else "petals-ops"
            terminal.info(f"error: {what}; see '{where} --help'")
            ctx.exit(e.exit_code)
        except click.ClickException as e:  # other click errors quote what they were given: redact it
            e.message = redact(e.message)
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=OpsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="petals-ops")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx, debug):
    """Operate nodes of a Petals swarm and run experiments against it.

    \b
    Start here (no GPU or internet needed):
      petals-ops swarm local up        # a private swarm on 127.0.0.1 with a tiny BLOOM
      petals-ops swarm status          # blocks, servers and coverage of that swarm
      petals-ops generate "Q: 2+2?"    # text through the swarm
      petals-ops swarm local down

    Every command takes --help. Exit codes: 0 ok, 1 failure, 2 bad usage or input, 3 partial failure.
    """
    from petals_ops.util.output import quiet_library_logging

    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    quiet_library_logging(debug or bool(os.environ.get("PETALS_OPS_DEBUG")))


def _register() -> None:
    """Attach every command group (one module per concern; each keeps heavy imports inside functions)."""
    from petals_ops.cli import (bench_cmds, demo_cmd, doctor_cmd, exporter_cmd, fleet_cmds, generate_cmd,
                                model_cmds, swarm_cmds, tune_cmd)

    for command in (model_cmds.model, swarm_cmds.swarm, generate_cmd.generate, demo_cmd.demo,
                    exporter_cmd.exporter, bench_cmds.bench, *fleet_cmds.COMMANDS, tune_cmd.tune,
                    doctor_cmd.doctor):
        cli.add_command(command)


_register()


def main() -> None:
    from petals_ops.util import tmpclean

    tmpclean.remove_dead_sockets()  # what a killed command (kill -9) left in /tmp, gone at the next one
    tmpclean.remove_dead_multiprocessing_dirs()
    sockets_before = tmpclean.hivemind_sockets()
    try:
        cli(prog_name="petals-ops")
        code = 0
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if "hivemind" in sys.modules:  # a failed p2pd start, or a client still open, leaves its sockets in /tmp
        tmpclean.remove_stale_sockets(sockets_before, exiting="petals" in sys.modules)
    if "petals" in sys.modules:  # the command's work is done and written: no teardown that can hang
        tmpclean.exit_now(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
