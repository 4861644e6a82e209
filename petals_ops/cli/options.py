"""Click options shared by the commands that talk to a swarm: each spelled once, here.

``bench gsm8k``, ``tune gsm8k`` and ``generate`` take the same client options (:func:`client_options`,
handed to the command as one :class:`~petals_ops.client.options.ClientOptions`) and the same retry options
(:func:`retry_options`). Old spellings stay as hidden aliases, for scripts: ``generate --max-retries``
(now ``--client-retries``) and ``tune --step-retries`` (now ``--retries``).
"""

import functools

import click

from petals_ops.client.models import MAX_BLOCKS
from petals_ops.client.options import BACKENDS, DEFAULT_CLIENT_RETRIES, DEFAULT_REQUEST_TIMEOUT, ClientOptions
from petals_ops.lab.local_swarm import default_run_dir
from petals_ops.util.errors import one_line


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
            "--swarm-dir", type=DIR_PATH, default=None, envvar="PETALS_OPS_SWARM_DIR",
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


class NonNegativeNumber(PositiveNumber):
    """A finite number >= 0 (a backoff in seconds)."""

    def convert(self, value, param, ctx):
        import math

        number = value if isinstance(value, float) else click.FLOAT.convert(value, param, ctx)
        if not (math.isfinite(number) and number >= 0):
            self.fail(f"{value!r} is not a finite number >= 0", param, ctx)
        return number


POSITIVE = PositiveNumber()
NON_NEGATIVE = NonNegativeNumber()


class DirPath(click.Path):
    """A directory option (it may not exist yet): a path that cannot be resolved (a symlink loop, a
    component that is a file) is a usage error here, not a traceback where the directory is made."""

    def __init__(self):
        super().__init__(file_okay=False)

    def convert(self, value, param, ctx):
        from pathlib import Path

        value = super().convert(value, param, ctx)
        try:
            resolved = Path(value).expanduser().resolve()
        except (RuntimeError, OSError) as e:  # RuntimeError: Python 3.11's "Symlink loop from ..."
            self.fail(f"{value!r} cannot be resolved ({one_line(e, 100)}): "
                      "a symlink loop? pass a real directory", param, ctx)
        if resolved.exists() and not resolved.is_dir():
            self.fail(f"{value!r} is not a directory", param, ctx)
        return value


DIR_PATH = DirPath()
# A seed torch, numpy-free Python random and our path hashing all take (torch refuses 2**64 and above).
SEED = click.IntRange(0, 2**63 - 1)
AT_LEAST_ONE = click.IntRange(min=1)
AT_LEAST_ZERO = click.IntRange(min=0)


def client_options(func=None, *, default_backend: str = "petals"):
    """The target options (:func:`swarm_target_options`), ``--backend``, ``--client-retries`` and
    ``--request-timeout``; the command receives them as ``client`` (a :class:`ClientOptions`)."""
    if func is None:
        return functools.partial(client_options, default_backend=default_backend)

    @functools.wraps(func)
    def command(*args, initial_peers, model, dht_prefix, num_blocks, swarm_dir, backend, client_retries,
                max_retries, request_timeout, **kwargs):
        if max_retries is not None:  # the old spelling (generate), hidden
            if client_retries is not None and client_retries != max_retries:
                raise click.UsageError(f"--max-retries {max_retries} and --client-retries {client_retries} "
                                       "disagree: pass only --client-retries", click.get_current_context())
            client_retries = max_retries
        kwargs["client"] = ClientOptions(
            backend=backend, initial_peers=tuple(initial_peers), model=model, dht_prefix=dht_prefix,
            num_blocks=num_blocks, swarm_dir=swarm_dir,
            client_retries=DEFAULT_CLIENT_RETRIES if client_retries is None else client_retries,
            request_timeout=request_timeout)
        return func(*args, **kwargs)

    options = [
        click.option("--backend", type=click.Choice(BACKENDS), default=default_backend, show_default=True,
                     help="petals: through the swarm; local: the same checkpoint in this process."),
        click.option("--client-retries", default=None, type=AT_LEAST_ZERO,
                     help="Petals client retries per failed request before giving up (it re-routes; petals' "
                          f"default is forever) [default: {DEFAULT_CLIENT_RETRIES}]."),
        click.option("--max-retries", default=None, type=AT_LEAST_ZERO, hidden=True,
                     help="Old spelling of --client-retries."),
        click.option("--request-timeout", default=DEFAULT_REQUEST_TIMEOUT, show_default=True, type=POSITIVE,
                     help="Petals client per-request timeout (seconds)."),
    ]
    for option in reversed(options):
        command = option(command)
    return swarm_target_options(command)


def retry_options(func=None, *, default_retries: int, unit: str, old_spelling: str | None = None):
    """``--retries`` (of a failed ``unit`` in a fresh session, failed peers banned) and ``--backoff``;
    the command receives them as ``retry`` (a :class:`~petals_ops.client.retry.RetryPolicy`).
    ``old_spelling``: a hidden alias of ``--retries`` kept for scripts."""
    if func is None:
        return functools.partial(retry_options, default_retries=default_retries, unit=unit,
                                 old_spelling=old_spelling)

    @functools.wraps(func)
    def command(*args, retries, old_retries=None, backoff, **kwargs):
        from petals_ops.client.retry import RetryPolicy

        if old_retries is not None:
            if retries is not None and retries != old_retries:
                raise click.UsageError(f"{old_spelling} {old_retries} and --retries {retries} disagree: "
                                       "pass only --retries", click.get_current_context())
            retries = old_retries
        kwargs["retry"] = RetryPolicy(default_retries if retries is None else retries, backoff)
        return func(*args, **kwargs)

    options = [
        click.option("--retries", default=None, type=AT_LEAST_ZERO,
                     help=f"Retries of a failed {unit} in a fresh session (the failed peers banned) "
                          f"[default: {default_retries}]."),
        click.option("--backoff", default=1.0, show_default=True, type=NON_NEGATIVE,
                     help="First retry delay in seconds (doubles each time, at most 30)."),
    ]
    if old_spelling:
        options.append(click.option(old_spelling, "old_retries", default=None, type=AT_LEAST_ZERO,
                                    hidden=True, help="Old spelling of --retries."))
    for option in reversed(options):
        command = option(command)
    return command


def probe_option(func):
    """--probe-timeout / --no-probe: probe the swarm's ONLINE servers and initial peers (reachability)."""
    func = click.option(
        "--probe-timeout", default="5s", show_default=True, metavar="DURATION",
        help="How long each reachability probe (petals' rpc_info on each ONLINE server, a DHT ping of each "
             "initial peer) waits for an answer, e.g. 5s or 500ms.",
    )(func)
    return click.option(
        "--no-probe", is_flag=True,
        help="Trust the DHT records: probe nothing (an unreachable server counts as ONLINE).",
    )(func)


def parse_probe_timeout(text: str) -> float:
    """--probe-timeout as seconds (0.1 s .. 60 s), a one-line error otherwise."""
    from petals_ops.monitoring.server import parse_duration

    return parse_duration(text, option="--probe-timeout", minimum=0.1, maximum=60.0)
