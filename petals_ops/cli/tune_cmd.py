"""``petals-ops tune``: prompt tuning through the swarm (a thin layer over :mod:`petals_ops.tune`)."""

import contextlib

import click

from petals_ops.cli.options import DIR_PATH, SEED, client_options, retry_options
from petals_ops.cli.terminal import terminal
from petals_ops.util.output import OUTPUT_OPTION


@click.group()
def tune():
    """Train soft prompts through the swarm (the blocks stay frozen on the servers)."""


@tune.command("gsm8k")
@client_options
@retry_options(default_retries=3, unit="training step (on another route)", old_spelling="--step-retries")
@click.option(
    "--data",
    default="gsm8k:train",
    show_default=True,
    help="Question+rationale pairs: gsm8k:train, arith:train (the arithmetic model's task) "
    "or a GSM8K JSONL path.",
)
@click.option(
    "--mode",
    default="ptune",
    show_default=True,
    help="ptune: N prompt vectors before the input; deep_ptune: also N vectors added before every block.",
)
@click.option(
    "--pre-seq-len", default=16, show_default=True, type=int, help="N, the number of trained prompt vectors."
)
@click.option("--steps", default=200, show_default=True, type=int)
@click.option("--batch-size", default=8, show_default=True, type=int, help="Pairs per step.")
@click.option("--lr", default=1e-2, show_default=True, type=float, help="AdamW learning rate.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Prompt init and batch order.")
@click.option(
    "--max-length", default=256, show_default=True, type=int, help="Tokens per pair (longer ones are cut)."
)
@click.option(
    "--eval-every", default=20, show_default=True, type=int, help="Held-out loss every M steps (best kept)."
)
@click.option(
    "--eval-size", default=32, show_default=True, type=int, help="Held-out pairs (the last ones of --data)."
)
@click.option("--checkpoint-every", default=10, show_default=True, type=int, help="Checkpoint every K steps.")
@click.option(
    "--run-dir",
    default="tune-runs/gsm8k",
    show_default=True,
    type=DIR_PATH,
    help="Prompts, tune.json, loss.png and the checkpoint; the same command resumes.",
)
@click.option(
    "--servers-max-batch-size",
    default=2048,
    show_default=True,
    type=click.IntRange(min=1),
    help="The servers' --max_batch_size (tokens per request; they do not announce it).",
)
@OUTPUT_OPTION
def gsm8k(
    client,
    retry,
    data,
    mode,
    pre_seq_len,
    steps,
    batch_size,
    lr,
    seed,
    max_length,
    eval_every,
    eval_size,
    checkpoint_every,
    run_dir,
    servers_max_batch_size,
    output,
):
    """Tune soft prompts on question+rationale pairs (loss on the answer tokens only).

    Writes RUN_DIR/prompts.safetensors (last), best.safetensors (lowest held-out loss), tune.json and
    loss.png; use them with 'bench gsm8k --tuned-prompts RUN_DIR' or 'generate --tuned-prompts RUN_DIR'.
    Interrupted? Run the same command again: it resumes from the last checkpoint.
    """
    from petals_ops.tune.spec import TuneSpec
    from petals_ops.tune.trainer import TuneParams, run_tune

    spec = TuneSpec(
        data=data,
        mode=mode,
        pre_seq_len=pre_seq_len,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        max_length=max_length,
        eval_every=eval_every,
        eval_size=eval_size,
        checkpoint_every=checkpoint_every,
    )
    params = TuneParams(
        spec=spec,
        run_dir=run_dir,
        client=client,
        retry=retry,
        servers_max_batch_size=servers_max_batch_size,
    )
    with contextlib.ExitStack() as stack:
        shown = _TuneProgress(stack)
        result = run_tune(params, on_start=shown.start, on_step=shown.step)
    s = result.summary
    if output == "json":
        terminal.json(s.to_dict())
        return
    best = s.best
    terminal.echo(
        f"{s.mode} N={s.pre_seq_len}: {s.step}/{s.steps} steps, loss {s.losses[0]:.3f} -> "
        f"{s.losses[-1]:.3f}"
        + (f", best held-out loss {best.eval_loss:.3f} at step {best.step}" if best else "")
        + (f", {s.timing.tokens_per_second} tokens/s" if s.timing.tokens_per_second else "")
    )
    terminal.echo(f"prompts: {result.run_dir}/best.safetensors (id {best.id if best else s.prompts_id})")


class _TuneProgress:
    """step/total, loss, held-out loss, tokens/s and ETA: a terminal progress bar opened on ``stack`` once
    the run says where it starts."""

    def __init__(self, stack: contextlib.ExitStack):
        self.stack = stack
        self.bar = None

    def start(self, info_):
        terminal.info(
            ("resuming at" if info_["resumed"] else "starting at")
            + f" step {info_['step']} of {info_['steps']}; "
            f"{info_['train_pairs']} training pairs, {info_['held_out_pairs']} held out"
        )
        if info_["step"] < info_["steps"]:
            self.bar = self.stack.enter_context(terminal.progress(
                "tune", fields=("loss", "held-out", "tok/s"), total=info_["steps"], completed=info_["step"]))

    def step(self, r):
        values = {"loss": f"{r.loss:.3f}", "tok/s": f"{r.tokens_per_second:.0f}"}
        if r.eval_loss is not None:
            values["held-out"] = f"{r.eval_loss:.3f}"
        extra = (
            (f", held-out {r.eval_loss:.4f}" if r.eval_loss is not None else "")
            + (", checkpoint" if r.checkpoint else "")
            + (f", {r.retries} retries" if r.retries else "")
        )
        self.bar.update(r.step, line=f"[{r.step}/{r.steps}] loss {r.loss:.4f}{extra}; "
                                     f"{r.tokens_per_second:.0f} tokens/s, ETA {r.eta:.0f} s", **values)
