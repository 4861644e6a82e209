"""Run a GSM8K bench: questions in flight on worker threads, retries in fresh sessions, records at once.

Reliability: each attempt of a question runs in fresh inference sessions, retried with backoff and
failed peers banned (the client's one policy, :mod:`petals_ops.client.retry`); each attempt has a
deadline checked between tokens (and the client's ``request_timeout`` bounds one network call); after the
last attempt an error record is written, never a silent drop.
Records are appended by the main thread only, as each question finishes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petals_ops.client.backends import Backend
from petals_ops.bench.analysis import categorize
from petals_ops.bench.data import Dataset, Problem, default_prompt_for, load_dataset, select
from petals_ops.client.decoding import (
    Cancelled,
    QuestionTimeout,
    decode_batch,
    max_batch_for_cache,
    plan_batches,
)
from petals_ops.bench.extraction import answers_equal, extract_answer
from petals_ops.bench.methods import MethodConfig
from petals_ops.bench.prompts import ZERO_SHOT, PromptSet, Template, load_prompt_file
from petals_ops.bench.records import QuestionRecord, RunSummary, ScoredPath, is_record
from petals_ops.bench.store import RunStore, latest_by_id, read_records
from petals_ops.client.options import ClientOptions
from petals_ops.client.retry import RetriesExhausted, RetryPolicy, run_with_retries
from petals_ops.util.errors import InputError, one_line

CONFIG_VERSION = 2  # 2: typed records with error categories and method extras


@dataclass
class ExecOptions:
    """How to run (not part of the run's identity: may change between resumes)."""

    concurrency: int = 1
    retries: int = 2
    timeout: float = 600.0
    backoff: float = 1.0
    batch_size: int | None = None  # None: as many paths per batch as the servers' cache allows

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(self.retries, self.backoff)

    def validate(self) -> ExecOptions:
        if self.concurrency < 1:
            raise InputError(f"--concurrency {self.concurrency} must be at least 1",
                             fix="use --concurrency 1")
        self.retry.validate()
        if not 0 < self.timeout < float("inf"):  # also refuses nan
            raise InputError(f"--timeout {self.timeout} must be > 0 seconds", fix="use --timeout 600")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size} must be at least 1",
                             fix="omit it for automatic batching")
        return self


@dataclass
class Progress:
    total: int
    done: int = 0
    scored: int = 0
    correct: int = 0
    errors: int = 0
    tokens: int = 0  # generated in this invocation
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.scored if self.scored else None


def make_config(model, prompt: PromptSet, cfg: MethodConfig, dataset: Dataset, selection: dict,
                problems: list[Problem]) -> dict:
    """The identity of a run: what must match for a run dir to be resumed."""
    described = {} if prompt.template.plain else {"template": prompt.template.describe()}
    return {
        "version": CONFIG_VERSION,
        "model": {"name": model.name, "dht_prefix": model.dht_prefix},
        "prompt": {"id": prompt.prompt_id, "sha256": prompt.sha256, "exemplars": prompt.exemplars,
                   **described},
        "method": cfg.to_dict(),
        "data": {"source": dataset.source, "sha256": dataset.sha256, **selection, "n": len(problems)},
    }


ABANDON_GRACE = 10.0  # seconds past the deadline before a stuck attempt is abandoned


def _run_attempt(fn, timeout: float, cancel: threading.Event):
    """Run ``fn(stop)`` in its own daemon thread and wait at most ``timeout`` (+ grace).

    The deadline is normally noticed between tokens inside ``fn``; if the petals client hangs inside one
    call, the attempt is abandoned (its thread is told to stop and left behind) and the question retried.
    """
    box: dict[str, Any] = {}
    stop = threading.Event()

    def target() -> None:
        try:
            box["result"] = fn(stop)
        except BaseException as e:  # noqa: BLE001 (handed to the waiting thread)
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True, name="bench-attempt")
    thread.start()
    give_up = time.monotonic() + timeout + ABANDON_GRACE
    while thread.is_alive():
        thread.join(0.25)
        if cancel.is_set():
            stop.set()
            thread.join(5.0)
            raise Cancelled()
        if time.monotonic() > give_up:
            stop.set()
            raise QuestionTimeout(
                f"an attempt was stuck in the swarm client for over {timeout:.0f} s; abandoned")
    if "error" in box:
        raise box["error"]
    return box["result"]


class _Unscorable(Exception):
    """A completion the scorer failed on: that question's error record, not a retry (the same completion
    would come back)."""


@dataclass
class _Attempt:
    paths: list[ScoredPath] = field(default_factory=list)
    servers: set[str] = field(default_factory=set)
    batches: list[int] = field(default_factory=list)  # paths per inference session
    rounds: list[int] = field(default_factory=list)  # paths the method asked for, each time
    session_steps: int = 0  # requests sent through a route, summed over the sessions (bench.cost)
    server_steps: int = 0  # the same, each times the servers on its session's route


def _decode_rounds(backend: Backend, prompt_ids, problem: Problem, cfg: MethodConfig, batch_size: int,
                   deadline: float, stop: threading.Event) -> _Attempt:
    """The method's sampling policy: ask it how many paths to decode next, decode them (in sessions of at
    most ``batch_size``), score them as they arrive, and ask again, until it is decided or K paths are
    in. Path i is sampled with seed i however the paths are split, so a run resumed or batched otherwise
    decodes the same paths."""
    method, spec = cfg.impl, cfg.decode_spec()
    done = _Attempt()
    while len(done.paths) < cfg.paths:
        wanted = min(int(method.next_paths(cfg, tuple(done.paths))), cfg.paths - len(done.paths))
        if wanted < 1:
            break
        done.rounds.append(wanted)
        first = len(done.paths)
        for indices in plan_batches(wanted, batch_size):
            out = decode_batch(backend, prompt_ids, [first + i for i in indices], spec, problem.id,
                               deadline=deadline, cancel=stop)
            try:
                done.paths += [score_path(p, problem.gold) for p in out.paths]
            except Exception as e:  # noqa: BLE001 (reported as the question's error)
                raise _Unscorable(f"scoring: {type(e).__name__}: {one_line(e, 300)}") from e
            done.servers.update(out.servers)
            done.batches.append(len(indices))
            done.session_steps += out.forwards
            done.server_steps += out.forwards * max(1, len(out.servers))  # local backend: one process
            backend.collect()
    return done


def solve(backend: Backend, prompt: PromptSet, problem: Problem, cfg: MethodConfig, batch_size: int,
          opts: ExecOptions, cancel: threading.Event) -> QuestionRecord:
    """One question, start to end: a scored record or (after the last attempt) an error record."""
    method = cfg.impl
    prompt_ids = backend.tokenizer(prompt.render(problem.question), return_tensors="pt")["input_ids"]
    base = {"id": problem.id, "line": problem.line, "question": problem.question, "gold": problem.gold,
            "prompt_id": prompt.prompt_id, "method": cfg.method, "backend": backend.name,
            "prompt_tokens": int(prompt_ids.shape[1])}
    started = time.monotonic()
    tries = [0]  # the attempt being made (for an error record refused mid-way)

    def error_record(failures: list[str], attempts: int, done: _Attempt | None = None) -> QuestionRecord:
        done = done or _Attempt()
        return QuestionRecord(
            **base, paths=[], vote=None, correct=False, tokens=0,
            seconds=round(time.monotonic() - started, 3), attempts=attempts, failures=failures,
            servers=sorted(done.servers), batches=done.batches, rounds=done.rounds,
            error=failures[-1] if failures else "failed", finished_at=time.time())

    def attempt(n: int) -> _Attempt:  # a fresh session each time, its own deadline
        tries[0] = n
        deadline = time.monotonic() + opts.timeout
        return _run_attempt(lambda stop: _decode_rounds(backend, prompt_ids, problem, cfg, batch_size,
                                                        deadline, stop), opts.timeout, cancel)

    def refuse(error: Exception) -> None:
        if isinstance(error, _Unscorable):  # the same completion would come back: no retry
            raise error

    try:
        done, failed = run_with_retries(attempt, opts.retry, backend, cancel=cancel, refuse=refuse)
    except RetriesExhausted as e:
        return error_record([f.describe() for f in e.failures], opts.retries + 1)
    except _Unscorable as e:
        return error_record([str(e)], tries[0])
    failures = [f.describe() for f in failed]
    try:
        vote = method.aggregate(done.paths)
        extras = method.record_extras(done.paths, vote)
    except Exception as e:  # noqa: BLE001 (one unscorable completion is that question's error, never the run's)
        failures.append(f"scoring: {type(e).__name__}: {one_line(e, 300)}")
        return error_record(failures, len(failed) + 1, done)
    return QuestionRecord(
        **base, paths=done.paths, vote=vote, correct=answers_equal(vote, problem.gold),
        tokens=sum(p.tokens for p in done.paths), seconds=round(time.monotonic() - started, 3),
        attempts=len(failed) + 1, failures=failures, servers=sorted(done.servers), batches=done.batches,
        rounds=done.rounds, session_steps=done.session_steps, server_steps=done.server_steps, error=None,
        finished_at=time.time(), extras=extras)


def score_path(path, gold: str) -> ScoredPath:
    """Extract, compare and categorise one decoded path (:class:`decoding.PathOutput`)."""
    answer, how = extract_answer(path.text)
    scored = ScoredPath(i=path.index, answer=answer, how=how, correct=answers_equal(answer, gold),
                        finish=path.finish, tokens=path.tokens, text=path.text, raw=path.raw,
                        interventions=[i.to_dict() for i in path.interventions])
    return dataclasses.replace(scored, category=categorize(scored, gold))


def execute(backend: Backend, prompt: PromptSet, problems: list[Problem], cfg: MethodConfig, store: RunStore,
            opts: ExecOptions, batch_size: int, progress: Progress,
            on_record: Callable[[QuestionRecord, Progress], None] | None = None, *,
            threads: int | None = None) -> None:
    """Solve ``problems`` with ``opts.concurrency`` in flight; append each record as it finishes.
    ``threads``: torch's threads meanwhile (:func:`petals_ops.client.backends.client_threads`)."""
    cancel = threading.Event()
    pending = list(problems)
    in_flight: dict[Future, Problem] = {}
    with backend.quiet_gc(), backend.torch_threads(threads):
        pool = ThreadPoolExecutor(max_workers=opts.concurrency, thread_name_prefix="bench")
        try:
            while pending or in_flight:
                while pending and len(in_flight) < opts.concurrency:
                    problem = pending.pop(0)
                    in_flight[pool.submit(
                        solve, backend, prompt, problem, cfg, batch_size, opts, cancel)] = problem
                finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for future in finished:
                    in_flight.pop(future)
                    record = future.result()
                    store.append(record.to_dict())
                    progress.done += 1
                    progress.tokens += record.tokens
                    if record.error:
                        progress.errors += 1
                    else:
                        progress.scored += 1
                        progress.correct += bool(record.correct)
                    if on_record:
                        on_record(record, progress)
        except BaseException:
            cancel.set()  # in-flight questions stop at their next token; their records are not written
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def choose_batch_size(backend: Backend, prompt: PromptSet, todo: list[Problem], cfg: MethodConfig,
                      opts: ExecOptions, snapshot) -> tuple[int, str]:
    """Paths per batch: --batch-size if given; else all K, unless the servers' free cache holds fewer."""
    if opts.batch_size is not None:
        return min(cfg.paths, opts.batch_size), "--batch-size"
    if snapshot is None or cfg.paths == 1:
        return cfg.paths, "all paths in one batch"
    longest = max(len(backend.tokenizer(prompt.render(p.question))["input_ids"]) for p in todo)
    cap = max_batch_for_cache(snapshot.servers, longest + cfg.max_new_tokens, opts.concurrency)
    if cap is not None and cap < cfg.paths:
        return cap, "limited by the servers' free attention cache"
    return cfg.paths, "all paths in one batch"


def require_prompts_fit(model_ref, prompt: PromptSet, todo: list[Problem], cfg: MethodConfig,
                        limit: int | None, *, reserved: int = 0) -> None:
    """The longest rendered prompt must fit the servers' known length limit: checked before connecting.
    ``reserved``: positions the session holds besides the prompt (tuned prompts the model prepends)."""
    if limit is None or not todo:
        return
    from petals_ops.client.backends import require_length_fits
    from petals_ops.client.loading import load_tokenizer

    tokenizer = load_tokenizer(model_ref)
    longest, problem = max((len(tokenizer(prompt.render(p.question))["input_ids"]), p.id) for p in todo)
    what = f"the prompt of question {problem}"
    what += f" with {reserved} tuned prompt positions" if reserved else ""
    require_length_fits(longest + reserved, cfg.max_new_tokens, limit, what=what)


def _todo(problems: list[Problem], existing: dict[str, dict]) -> list[Problem]:
    """The problems to run: no record yet, an error record, or a line the reports cannot read (see
    report.load_records)."""
    return [p for p in problems
            if p.id not in existing or existing[p.id].get("error") or not is_record(existing[p.id])]


@dataclass
class BenchParams:
    data: str | None = "demo"
    offset: int = 0
    limit: int | None = None
    sample: int | None = None
    sample_seed: int = 0
    prompt_file: str | None = None
    zero_shot: bool = False  # no exemplars: 'Q: question\nA:' alone (with --tuned-prompts, say)
    template: Template = field(default_factory=Template)  # shots, exemplar order, instruction lines
    tuned_prompts: str | None = None  # a tune run dir or prompt file (petals_ops.client.tuned_prompts)
    method: MethodConfig = field(default_factory=MethodConfig)
    run_dir: str = "bench-run"
    client: ClientOptions = field(default_factory=ClientOptions)  # which swarm and model; the petals client
    exec: ExecOptions = field(default_factory=ExecOptions)
    gpus: int | None = None  # GPUs serving the run, for its cost (bench.cost; default: servers online)
    gpu_hour_price: float | None = None  # price of one GPU-hour, for its cost (default: none)


@dataclass
class BenchResult:
    run_dir: Path
    summary: RunSummary
    report_path: Path


def run_bench(params: BenchParams, *, on_start: Callable[[Progress, dict], None] | None = None,
              on_record: Callable[[dict, Progress], None] | None = None,
              open_backend: Callable[..., Backend] | None = None) -> BenchResult:
    """Everything ``petals-ops bench gsm8k`` does: validate, connect, resume, run, summarise, report.
    ``open_backend``: how to get a backend (default: client.backends.open_backend; a sweep passes one
    that keeps a single connection for all its runs)."""
    from petals_ops.bench import report

    from petals_ops.bench.cost import check_gpus, check_price

    cfg = params.method.validate()
    opts = params.exec.validate()
    check_gpus(params.gpus), check_price(params.gpu_hour_price)
    client = params.client.validate()
    dataset = load_dataset(params.data)
    selection = {"offset": params.offset, "limit": params.limit, "sample": params.sample,
                 "sample_seed": params.sample_seed}
    problems = select(dataset.problems, **selection)
    if params.zero_shot and params.prompt_file:
        raise InputError("--zero-shot and --prompt-file were both given", fix="pass one of them")
    prompt = ZERO_SHOT if params.zero_shot else \
        load_prompt_file(params.prompt_file or default_prompt_for(params.data))
    prompt = params.template.apply(prompt)
    tuned = None
    if params.tuned_prompts:
        from petals_ops.client.tuned_prompts import load_prompts

        tuned = load_prompts(params.tuned_prompts)
        prompt = dataclasses.replace(prompt, tuned=tuned.prompts_id)

    from petals_ops.lab.target import resolve_for_backend

    snapshot = None
    target = resolve_for_backend(client)
    model_ref = target.model

    config = make_config(model_ref, prompt, cfg, dataset, selection, problems)
    if model_ref.path:  # a checkpoint on this machine (local backend, our lab swarm): its weights are pinned
        from petals_ops.client.models import weights_sha256

        config["model"]["weights_sha256"] = weights_sha256(model_ref.path)
    if tuned is not None:
        from petals_ops.client.tuned_prompts import require_compatible

        require_compatible(tuned, model_ref)  # before the run dir is touched
        config["tuned_prompts"] = {k: v for k, v in tuned.describe().items() if k != "path"}
    store = RunStore(params.run_dir)
    # the pre-flight checks come before the run dir is touched: a refused command pins no config there
    if client.through_swarm:
        from petals_ops.swarm.health import take_snapshot

        todo = _todo(problems, latest_by_id(read_records(store.run_dir)))  # read only
        require_prompts_fit(model_ref, prompt, todo, cfg, target.max_length,
                            reserved=tuned.pre_seq_len if tuned is not None else 0)
        snapshot = take_snapshot(target.initial_peers, target.model)
        snapshot.require_full_coverage()
    existing = store.open(config)
    try:
        todo = _todo(problems, existing)
        progress = Progress(total=len(todo))
        run_info = {"todo": len(todo), "done_before": len(problems) - len(todo), "n": len(problems),
                    "batch_size": None, "batch_note": "nothing to run"}
        if todo:
            from petals_ops.client.backends import client_threads

            if open_backend is None:
                from petals_ops.client.backends import open_backend

            peers = target.initial_peers if client.through_swarm else ()
            with open_backend(client.backend, model_ref, peers, prompts=tuned,
                              **client.client_kwargs()) as backend:
                run_info["batch_size"], run_info["batch_note"] = choose_batch_size(
                    backend, prompt, todo, cfg, opts, snapshot)
                if on_start:
                    on_start(progress, run_info)
                execute(backend, prompt, todo, cfg, store, opts, run_info["batch_size"], progress, on_record,
                        threads=client_threads(opts.concurrency, target.local_run_dir is not None))
        elif on_start:
            on_start(progress, run_info)
        summary = report.summarize(store.run_dir, config, problems, progress=progress, backend=client.backend,
                                   snapshot=snapshot, run_info=run_info, exec_options=opts, gpus=params.gpus,
                                   gpu_hour_price=params.gpu_hour_price)
        report_path = report.write_run_report(store.run_dir, summary)
    finally:
        store.close()
    return BenchResult(store.run_dir, summary, report_path)
