"""The training loop of ``petals-ops tune``: resumable, observable, and robust to servers that die.

Each step is one forward and one backward through every server of the route (the blocks are frozen;
only the prompt tensors on the client get gradients), then an AdamW step on the client. A step that
fails after the petals client's own re-routing (``client_retries``) is retried whole by the client's one
retry policy (:mod:`petals_ops.client.retry`): the peers the error names are banned first, so the retry
takes another route; after ``retry.retries`` the run stops with one line naming the uncovered blocks (or
the error). Automatic GC is off while the loop runs and collected from this thread between steps (the
petals client's ``__del__`` hang, see petals_ops.client.backends).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petals_ops.client.backends import Backend
from petals_ops.client.options import ClientOptions
from petals_ops.client.retry import RetriesExhausted, RetryPolicy, run_with_retries
from petals_ops.util.errors import InputError, OpsError
from petals_ops.tune.spec import DEFAULT_SERVERS_MAX_BATCH_SIZE, TuneSpec, check_request_size
from petals_ops.tune.summary import BestPrompts, EvalPoint, StepFailure, TuneData, TuneSummary, TuneTiming

CONFIG_VERSION = 1
MAX_BATCH_RE = re.compile(r"Task size greater than max_batch_size \((\d+)\)")


@dataclass
class TuneParams:
    spec: TuneSpec = field(default_factory=TuneSpec)
    run_dir: str = "tune-runs/gsm8k"
    client: ClientOptions = field(default_factory=ClientOptions)  # which swarm and model; the petals client
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(retries=3))  # of a failed step
    servers_max_batch_size: int = DEFAULT_SERVERS_MAX_BATCH_SIZE


@dataclass
class StepReport:
    step: int
    steps: int
    loss: float
    tokens_per_second: float  # real (unpadded) training tokens of this invocation per second
    eta: float
    eval_loss: float | None = None
    checkpoint: bool = False
    retries: int = 0


@dataclass
class TuneResult:
    run_dir: Path
    summary: TuneSummary


def _resolve_model(params: TuneParams):
    """(model ref, initial peers): the swarm's, or a checkpoint in-process (like bench gsm8k)."""
    from petals_ops.lab.target import resolve_for_backend

    target = resolve_for_backend(params.client)
    return target.model, list(target.initial_peers)


def make_config(ref, spec: TuneSpec, pairs) -> dict:
    """The identity of a run: what must match for a run dir to be resumed."""
    return {
        "version": CONFIG_VERSION,
        "model": {"name": ref.name, "dht_prefix": ref.dht_prefix},
        "spec": spec.to_dict(),
        "data": {"source": pairs.source, "sha256": pairs.sha256},
    }


def run_tune(
    params: TuneParams,
    *,
    on_start: Callable[[dict], None] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
) -> TuneResult:
    """Everything ``petals-ops tune gsm8k`` does: validate, connect, resume, train, evaluate, checkpoint."""
    from petals_ops.tune.examples import load_pairs
    from petals_ops.tune.store import TuneStore

    spec = params.spec.validate()
    client = params.client.validate()
    params.retry.validate()
    if client.through_swarm:
        check_request_size(spec, params.servers_max_batch_size)
    ref, peers = _resolve_model(params)
    pairs = load_pairs(spec.data, spec.eval_size)
    from petals_ops.client.loading import load_tokenizer
    from petals_ops.tune.examples import require_answer_tokens

    require_answer_tokens(load_tokenizer(ref), pairs, spec.max_length)  # else the loss measures nothing
    if client.through_swarm:  # before the run dir is touched: a refused command pins no config there
        from petals_ops.swarm.health import take_snapshot

        take_snapshot(peers, ref).require_full_coverage()
    config = make_config(ref, spec, pairs)
    if ref.path:  # a checkpoint on this machine: its weights are pinned (as the bench's)
        from petals_ops.client.models import weights_sha256

        config["model"]["weights_sha256"] = weights_sha256(ref.path)
    store = TuneStore(params.run_dir)
    checkpoint = store.open(config)
    try:
        loop = _Loop(params, spec, ref, peers, pairs, store, checkpoint)
        if checkpoint is not None and ref.hidden_size and ref.num_blocks:  # before "resuming at step N"
            from petals_ops.client.tuned_model import keys_for

            n, hidden = spec.pre_seq_len, ref.hidden_size
            shapes = [(n, hidden), (n, ref.num_blocks * hidden)]  # ptune: the first only
            loop.require_checkpoint_fits(dict(zip(keys_for(spec.mode), shapes)))
        if on_start:
            on_start(
                {
                    "step": loop.step,
                    "steps": spec.steps,
                    "resumed": checkpoint is not None,
                    "train_pairs": len(pairs.train),
                    "held_out_pairs": len(pairs.held_out),
                }
            )
        loop.run(on_step)
        return TuneResult(store.run_dir, loop.summary())
    finally:
        store.close()


class _Loop:
    def __init__(self, params: TuneParams, spec: TuneSpec, ref, peers, pairs, store, checkpoint):
        self.params, self.spec, self.ref, self.peers, self.pairs, self.store = (
            params,
            spec,
            ref,
            peers,
            pairs,
            store,
        )
        state = checkpoint or {}
        self.step = int(state.get("step", 0))
        self.history: dict[str, Any] = state.get("history") or {
            "losses": [],
            "evals": [],
            "forward_s": 0.0,
            "backward_s": 0.0,
            "optimizer_s": 0.0,
            "tokens": 0,
            "padded_tokens": 0,
            "train_s": 0.0,
            "retries": 0,
            "failures": [],
            "resumed_at": [],
            "servers": [],
        }
        self.best: dict[str, Any] = state.get("best") or {}
        if checkpoint is not None:
            self.history["resumed_at"].append(self.step)
        self._prompts = state.get("prompts")
        self._optimizer_state = state.get("optimizer")
        self.servers: set[str] = set(self.history["servers"])
        self.hidden_size = None
        self.last_id = state.get("last_id")

    # --- setup -------------------------------------------------------------------------------------------
    def _open(self):
        import torch

        from petals_ops.client.tuned_model import init_prompts, open_tunable, prompt_parameters

        loaded = open_tunable(
            self.params.client.backend,
            self.ref,
            self.peers,
            self.spec.mode,
            self.spec.pre_seq_len,
            **self.params.client.client_kwargs(),
        )
        model = loaded.model
        self.hidden_size = int(model.config.hidden_size)
        self.params_by_name = prompt_parameters(model, self.spec.mode)
        if self._prompts is None:
            init_prompts(model, self.spec.mode, self.spec.seed)
        else:
            self.require_checkpoint_fits({k: tuple(v.shape) for k, v in self.params_by_name.items()})
            with torch.no_grad():
                for key, value in self._prompts.items():
                    self.params_by_name[key].copy_(value)
        for p in self.params_by_name.values():
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(
            list(self.params_by_name.values()), lr=self.spec.lr, weight_decay=0.0
        )
        if self._optimizer_state is not None:
            try:
                self.optimizer.load_state_dict(self._optimizer_state)
            except (ValueError, KeyError, TypeError, RuntimeError) as e:
                raise self._bad_checkpoint(f"its optimizer state does not fit ({type(e).__name__})") from e
        if loaded.backend == "petals":
            from petals_ops.client import door

            door.on_each_answer(model, self.servers.add)  # petals routes inside its client
        return loaded

    def require_checkpoint_fits(self, want: dict) -> None:
        """The checkpoint's prompts must have this model's and mode's shapes ``want`` (another model's
        checkpoint was a traceback)."""
        have = {k: tuple(v.shape) for k, v in self._prompts.items()}
        if have != want:
            raise self._bad_checkpoint(f"it holds prompts {have}, this run's model and mode take {want}")

    def _bad_checkpoint(self, why: str) -> InputError:
        from petals_ops.tune.store import CHECKPOINT_FILE

        return InputError(f"--run-dir {self.store.run_dir}: {CHECKPOINT_FILE} is not this run's ({why})",
                          fix=f"remove {self.store.checkpoint_path} to start over, or use a new --run-dir")

    # --- the loop ----------------------------------------------------------------------------------------
    def run(self, on_step) -> None:
        from petals_ops.tune.examples import collate

        if self.step >= self.spec.steps:
            return
        loaded = self._open()
        backend = Backend(loaded)
        started, tokens_now = time.monotonic(), 0
        try:
            with backend.quiet_gc():
                while self.step < self.spec.steps:
                    step = self.step + 1
                    ids, labels, real = collate(
                        loaded.tokenizer,
                        self.pairs.batch(step, self.spec.batch_size, self.spec.seed),
                        self.spec.max_length,
                    )
                    loss, retries = self._train_step(backend, step, ids, labels)
                    backend.collect()
                    self.step = step
                    self.history["losses"].append(round(loss, 5))
                    self.history["tokens"] += real
                    self.history["padded_tokens"] += int(ids.numel())
                    tokens_now += real
                    report = StepReport(step, self.spec.steps, loss, 0.0, 0.0, retries=retries)
                    if step % self.spec.eval_every == 0 or step == self.spec.steps:
                        report.eval_loss = self._evaluate(backend)
                        backend.collect()
                    if step % self.spec.checkpoint_every == 0 or step == self.spec.steps:
                        self._checkpoint()
                        report.checkpoint = True
                    elapsed = time.monotonic() - started
                    report.tokens_per_second = tokens_now / elapsed if elapsed > 0 else 0.0
                    done_now = step - (self.history["resumed_at"][-1] if self.history["resumed_at"] else 0)
                    report.eta = elapsed / max(done_now, 1) * (self.spec.steps - step)
                    if on_step:
                        on_step(report)
        finally:
            loaded.close()

    def _train_step(self, backend: Backend, step: int, ids, labels) -> tuple[float, int]:
        from petals_ops.client.tuned_model import step_loss

        def attempt(_: int):
            self.optimizer.zero_grad(set_to_none=True)
            t0 = time.monotonic()
            loss = step_loss(backend.loaded.model, ids, labels)
            t1 = time.monotonic()
            loss.backward()
            t2 = time.monotonic()
            self.optimizer.step()
            return loss, (t0, t1, t2, time.monotonic())

        (loss, (t0, t1, t2, t3)), failures = self._with_retries(attempt, backend, step)
        self.history["forward_s"] += t1 - t0
        self.history["backward_s"] += t2 - t1
        self.history["optimizer_s"] += t3 - t2
        self.history["train_s"] += t3 - t0
        self.history["retries"] += len(failures)
        return float(loss.detach()), len(failures)

    def _with_retries(self, attempt, backend: Backend, step: int):
        """``attempt`` under the client's retry policy (ban, back off, another route); every failure goes
        into the history; after the last one, one line naming the missing blocks or the error."""

        def refuse(error: Exception) -> None:
            too_big = MAX_BATCH_RE.search(" ".join(str(error).split()))
            if too_big:
                raise InputError(
                    f"the servers refused a training request: max_batch_size {too_big[1]} tokens",
                    fix=f"lower --batch-size or --max-length "
                    f"(and pass --servers-max-batch-size {too_big[1]})",
                ) from error
            if backend.name != "petals":
                raise error

        try:
            result, failures = run_with_retries(attempt, self.params.retry, backend, refuse=refuse)
        except RetriesExhausted as e:
            self._note_failures(step, e.failures)
            from petals_ops.swarm.health import take_snapshot

            take_snapshot(self.peers, self.ref).require_full_coverage()  # names the missing blocks, if any
            raise OpsError(
                f"training step {step} failed {len(e.failures)} times through the swarm "
                f"(last: {e.failures[-1].text})",
                fix="check 'petals-ops swarm status'; the same command resumes from the last checkpoint",
            ) from e.failures[-1].error
        self._note_failures(step, failures)
        return result, failures

    def _note_failures(self, step: int, failures) -> None:
        for f in failures:
            self.history["failures"].append(
                {"step": step, "attempt": f.attempt, "error": f.text, "banned": f.banned}
            )

    def _evaluate(self, backend: Backend) -> float:
        """Mean loss per answer token on the held-out slice (no gradients)."""
        import torch

        from petals_ops.tune.examples import collate
        from petals_ops.client.tuned_model import step_loss

        total, count = 0.0, 0
        held = self.pairs.held_out
        for start in range(0, len(held), self.spec.batch_size):
            ids, labels, _ = collate(
                backend.tokenizer, held[start : start + self.spec.batch_size], self.spec.max_length
            )
            n = int((labels[:, 1:] != -100).sum())

            def attempt(_: int, ids=ids, labels=labels) -> float:
                with torch.no_grad():
                    return float(step_loss(backend.loaded.model, ids, labels))

            loss, _ = self._with_retries(attempt, backend, self.step)
            total, count = total + loss * n, count + n
        value = round(total / max(count, 1), 5)
        self.history["evals"].append({"step": self.step, "loss": value})
        if not self.best or value < self.best["eval_loss"]:
            from petals_ops.client.tuned_prompts import BEST_FILE

            self.best = {"step": self.step, "eval_loss": value, "id": self._save(BEST_FILE)}
        return value

    def _save(self, name: str) -> str:
        """The current prompts as the prompt file ``name`` of the run dir; returns their id."""
        from petals_ops.client.tuned_prompts import save_prompts

        return save_prompts(
            self.store.run_dir / name,
            self.params_by_name,
            mode=self.spec.mode,
            ref=self.ref,
            hidden_size=self.hidden_size,
            step=self.step,
        )

    def _checkpoint(self) -> None:
        from petals_ops.client.tuned_prompts import LAST_FILE

        self.history["servers"] = sorted(self.servers)
        self.last_id = self._save(LAST_FILE)
        self.store.write_checkpoint(
            {
                "step": self.step,
                "history": self.history,
                "best": self.best,
                "last_id": self.last_id,
                "prompts": {k: v.detach().clone() for k, v in self.params_by_name.items()},
                "optimizer": self.optimizer.state_dict(),
            }
        )
        self.store.write_summary(self.summary())
        self.store.write_plot(
            self.history["losses"],
            self.history["evals"],
            f"{self.spec.mode} N={self.spec.pre_seq_len} on {self.pairs.source}",
        )

    def summary(self) -> TuneSummary:
        h = self.history
        train_s = h["train_s"]
        return TuneSummary(
            model=self.ref.name,
            dht_prefix=self.ref.dht_prefix,
            backend=self.params.client.backend,
            mode=self.spec.mode,
            pre_seq_len=self.spec.pre_seq_len,
            data=TuneData(
                source=self.pairs.source,
                sha256=self.pairs.sha256,
                train_pairs=len(self.pairs.train),
                held_out_pairs=len(self.pairs.held_out),
            ),
            hyperparameters=self.spec.to_dict(),
            step=self.step,
            steps=self.spec.steps,
            losses=list(h["losses"]),
            evals=[EvalPoint(**e) for e in h["evals"]],
            best=BestPrompts(**self.best) if self.best else None,
            prompts_id=self.last_id,
            servers=sorted(self.servers),
            resumed_at=list(h["resumed_at"]),
            retries=h["retries"],
            failures=[StepFailure(**f) for f in h["failures"][-20:]],
            timing=TuneTiming(
                forward_s=round(h["forward_s"], 3),
                backward_s=round(h["backward_s"], 3),
                optimizer_s=round(h["optimizer_s"], 3),
                train_s=round(train_s, 3),
                tokens=h["tokens"],
                padded_tokens=h["padded_tokens"],
                tokens_per_second=round(h["tokens"] / train_s, 1) if train_s else None,
            ),
        )
