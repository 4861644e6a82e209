"""``bench sweep``: a grid of bench runs (seeds x shots x exemplar order x prompt set x method x temperature),
each an ordinary resumable run dir under one sweep dir.

A spec (YAML, or the same keys as command-line options; :func:`parse_spec`) names the axes. The grid's
cells are grouped into *configurations* (prompt set, method, shots, temperature) whose *replicates* are
the seeds and exemplar orders: ``bench sweep report`` shows each configuration's mean accuracy with its
spread across replicates. Runs that cannot differ are run once and shared (a greedy method does not depend
on the sampling seed or temperature); every configuration's first replicate runs before any second one, so
an interrupted sweep has seen every configuration early; one backend (swarm connection or loaded
checkpoint) serves every run of an invocation. The same command resumes the whole sweep: each run dir
skips its finished questions, finished runs cost a look at their records.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from petals_ops.bench.methods import METHODS, MethodConfig, get_method
from petals_ops.bench.prompts import Template
from petals_ops.bench.runner import BenchParams, BenchResult, ExecOptions, run_bench
from petals_ops.bench.store import RunStore
from petals_ops.client.options import ClientOptions
from petals_ops.util import safe_yaml
from petals_ops.util.errors import InputError
from petals_ops.util.fsutil import why_not_a_file, write_json_atomic

SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"
SWEEP_VERSION = 1
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,39}")
SPEC_KEYS = ("data", "offset", "limit", "sample", "sample_seed", "seeds", "shots", "shot_choice", "orders",
             "prompts", "methods", "temperatures", "top_k", "max_new_tokens", "baseline")
METHOD_KEYS = ("method", "paths", "top_k", "max_new_tokens", "calculator", "params")
PROMPT_KEYS = ("file", "instruction", "answer_instruction")
MAX_SPEC_BYTES = 1024 * 1024


def _bad(key: str, problem: str, fix: str) -> InputError:
    return InputError(f"sweep spec: {key} {problem}", fix=fix)


@dataclass(frozen=True)
class PromptChoice:
    """A prompt set of the grid: a prompt file (None: the data's default) and its instruction lines."""

    label: str
    file: str | None = None
    instruction: str = ""
    answer_instruction: str = ""


@dataclass(frozen=True)
class MethodChoice:
    """A method of the grid, with its own settings (the temperature and seed come from the grid)."""

    label: str
    method: str
    paths: int
    top_k: int | None
    max_new_tokens: int
    calculator: bool = False
    params: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class SweepSpec:
    methods: tuple[MethodChoice, ...]
    data: str = "demo"
    offset: int = 0
    limit: int | None = None
    sample: int | None = None
    sample_seed: int = 0
    seeds: tuple[int, ...] = (0,)
    shots: tuple[int | None, ...] = (None,)  # None: all the prompt's exemplars
    shot_choice: str = "first"  # or "seeded": the run's seed chooses which exemplars
    orders: tuple[int | None, ...] = (None,)  # None: file order; else a seeded permutation
    prompts: tuple[PromptChoice, ...] = (PromptChoice("default"),)
    temperatures: tuple[float, ...] = (0.7,)
    baseline: str | None = None  # a configuration's label; None: the first configuration
    raw: dict[str, Any] = field(default_factory=dict, compare=False)  # the spec as given (sweep.json)


# --- reading a spec ------------------------------------------------------------------------------------

def _int(key: str, value: Any, *, minimum: int = 0, none: bool = False) -> int | None:
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(key, f"is {value!r}, not a whole number >= {minimum}",
                   fix=f"write {key}: {max(minimum, 1)}" + (" (or null)" if none else ""))
    return value


def _list(key: str, value: Any, example: str) -> list:
    if value is None:
        raise _bad(key, "is empty", fix=f"write {key}: {example}")
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _bad(key, "is an empty list", fix=f"write {key}: {example}")
    if len(set(map(json.dumps, items))) != len(items):
        raise _bad(key, f"repeats a value ({items})", fix="list each value once")
    return items


def _order(key: str, value: Any) -> int | None:
    if value in (None, "file"):
        return None
    return _int(key, value)


def _label(key: str, label: Any) -> str:
    if not isinstance(label, str) or not LABEL_RE.fullmatch(label):
        raise _bad(key, f"has the label {label!r}: a label is 1-40 letters, digits, '.', '_', '+' or '-'",
                   fix="name it like sc10 or direction")
    return label


def _entries(key: str, value: Any, example: str) -> list[tuple[str, dict]]:
    """A mapping label -> settings, or a list of labels / one-entry mappings, as (label, settings)."""
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list) and value:
        items = []
        for item in value:
            if isinstance(item, str):
                items.append((item, {}))
            elif isinstance(item, dict) and len(item) == 1:
                items.append(next(iter(item.items())))
            else:
                raise _bad(key, f"has the entry {item!r}", fix=f"write {key}: {example}")
    else:
        raise _bad(key, f"is {value!r}", fix=f"write {key}: {example}")
    if not items:
        raise _bad(key, "is empty", fix=f"write {key}: {example}")
    out = []
    for label, settings in items:
        _label(key, label)
        if settings is None:
            settings = {}
        if not isinstance(settings, dict):
            raise _bad(f"{key}.{label}", f"is {settings!r}, not a mapping of settings",
                       fix=f"write {key}: {example}")
        out.append((label, settings))
    return out


def _method(label: str, settings: dict, top_k: int | None, max_new_tokens: int) -> MethodChoice:
    key = f"methods.{label}"
    unknown = sorted(set(settings) - set(METHOD_KEYS))
    if unknown:
        raise _bad(f"{key}.{unknown[0]}", "is not a method setting", fix=f"use {', '.join(METHOD_KEYS)}")
    name = settings.get("method", label)
    if name not in METHODS:
        raise _bad(f"{key}.method", f"{name!r} is not a method", fix=f"use one of: {', '.join(METHODS)}")
    impl = get_method(name)
    params = settings.get("params") or {}
    if not isinstance(params, dict):
        raise _bad(f"{key}.params", f"is {params!r}", fix="write params: {NAME: VALUE}")
    k = settings.get("top_k", top_k)
    try:
        parsed = impl.parse_params([f"{n}={v}" for n, v in params.items()])
    except InputError as e:
        raise _bad(f"{key}.params", f"is refused: {e.message}", fix=e.fix or "") from None
    choice = MethodChoice(
        label=label, method=name, paths=_int(f"{key}.paths", settings.get("paths", impl.default_paths),
                                             minimum=1),
        top_k=None if not k else _int(f"{key}.top_k", k, minimum=1),
        max_new_tokens=_int(f"{key}.max_new_tokens", settings.get("max_new_tokens", max_new_tokens),
                            minimum=1),
        calculator=bool(settings.get("calculator", False)),
        params=parsed)
    try:
        _method_config(choice, 0.7, 0).validate()
    except InputError as e:
        raise _bad(key, f"is refused: {e.message}", fix=e.fix or "see bench gsm8k --help") from None
    return choice


def parse_spec(raw: Any, where: str = "the sweep spec") -> SweepSpec:
    """A spec (the YAML's mapping, options merged in) checked key by key: a bad key is a one-line error
    naming it and the fix."""
    if not isinstance(raw, dict):
        raise InputError(f"{where} is not a mapping of keys (data, seeds, shots, prompts, methods...)",
                         fix="see docs/bench.md, 'Sweeps'")
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise _bad(unknown[0], "is not a sweep spec key", fix=f"use {', '.join(SPEC_KEYS)}")
    if "methods" not in raw:
        raise _bad("methods", "is missing", fix="write methods: [cot, sc] (or --methods cot,sc)")
    top_k = raw.get("top_k", 40)
    max_new = _int("max_new_tokens", raw.get("max_new_tokens", 256), minimum=1)
    methods = tuple(_method(label, s, top_k, max_new)
                    for label, s in _entries("methods", raw["methods"], "{cot: {}, sc: {paths: 10}}"))
    prompts = []
    for label, s in _entries("prompts", raw.get("prompts", ["default"]), "{plain: {}, direction: "
                             "{instruction: ..., answer_instruction: ...}}"):
        unknown = sorted(set(s) - set(PROMPT_KEYS))
        if unknown:
            raise _bad(f"prompts.{label}.{unknown[0]}", "is not a prompt setting",
                       fix=f"use {', '.join(PROMPT_KEYS)}")
        for name in PROMPT_KEYS:
            if s.get(name) is not None and not isinstance(s[name], str):
                raise _bad(f"prompts.{label}.{name}", f"is {s[name]!r}, not text", fix="quote it")
        choice = PromptChoice(label, s.get("file"), s.get("instruction") or "",
                              s.get("answer_instruction") or "")
        try:
            Template(instruction=choice.instruction, answer_instruction=choice.answer_instruction).validate()
        except InputError as e:
            raise _bad(f"prompts.{label}", f"is refused: {e.message}", fix=e.fix or "") from None
        prompts.append(choice)
    temperatures = []
    for t in _list("temperatures", raw.get("temperatures", [0.7]), "[0.5, 0.7]"):
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf"):
            raise _bad("temperatures", f"has {t!r}, not a number > 0", fix="write temperatures: [0.7]")
        temperatures.append(float(t))
    shot_choice = raw.get("shot_choice", "first")
    if shot_choice not in ("first", "seeded"):
        raise _bad("shot_choice", f"is {shot_choice!r}", fix="write shot_choice: first (or seeded: the "
                   "run's seed chooses the exemplars)")
    spec = SweepSpec(
        methods=methods,
        data=str(raw.get("data", "demo")),
        offset=_int("offset", raw.get("offset", 0)),
        limit=_int("limit", raw.get("limit"), minimum=1, none=True),
        sample=_int("sample", raw.get("sample"), minimum=1, none=True),
        sample_seed=_int("sample_seed", raw.get("sample_seed", 0)),
        seeds=tuple(_int("seeds", s) for s in _list("seeds", raw.get("seeds", [0]), "[0, 1, 2]")),
        shots=tuple(_int("shots", s, none=True)
                    for s in _list("shots", raw.get("shots", [None]), "[2, 4, 8]")),
        shot_choice=shot_choice,
        orders=tuple(_order("orders", o) for o in _list("orders", raw.get("orders", [None]), "[file, 1, 2]")),
        prompts=tuple(prompts),
        temperatures=tuple(temperatures),
        baseline=raw.get("baseline"),
        raw=raw,
    )
    for key, choices in (("methods", spec.methods), ("prompts", spec.prompts)):
        if len({c.label for c in choices}) != len(choices):
            raise _bad(key, "has a label twice", fix="give each entry its own label")
    plan = plan_sweep(spec)
    if spec.baseline is not None and spec.baseline not in plan.configs:
        raise _bad("baseline", f"{spec.baseline!r} is not a configuration of this grid",
                   fix=f"use one of: {', '.join(list(plan.configs)[:6])}")
    return spec


def load_spec(path: str | Path | None, overrides: dict[str, Any]) -> SweepSpec:
    """The spec file (YAML; None: options only) with ``overrides`` (the command line's keys) on top."""
    raw: Any = {}
    if path is not None:
        import yaml

        why = why_not_a_file(path)
        if why is not None:
            raise InputError(f"sweep spec {path} {why}",
                             fix="pass a YAML file like docs/sweeps/arith-grid.yaml")
        if Path(path).stat().st_size > MAX_SPEC_BYTES:
            raise InputError(f"sweep spec {path} is over {MAX_SPEC_BYTES:,} bytes",
                             fix="a spec is a few lines: see docs/sweeps/arith-grid.yaml")
        try:
            raw, _ = safe_yaml.parse(Path(path).read_text(encoding="utf-8"), f"sweep spec {path}")
        except OSError as e:
            raise InputError(f"sweep spec {path} cannot be read ({e.strerror})",
                             fix="pass a YAML file") from e
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise InputError(f"sweep spec {path} is not YAML ({' '.join(str(e).split())[:120]})",
                             fix="check its indentation and quoting") from e
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise InputError(f"sweep spec {path} is not a mapping of keys", fix="see docs/bench.md, 'Sweeps'")
    return parse_spec({**raw, **overrides}, where=f"sweep spec {path}" if path else "the sweep options")


def option_list(key: str, text: str) -> list:
    """A comma-separated option value as the spec's list (numbers as numbers, 'null'/'all' as None)."""
    out: list = []
    for item in (t.strip() for t in text.split(",")):
        if item in ("null", "all", "none"):
            out.append(None)
        elif re.fullmatch(r"-?\d+", item):
            out.append(int(item))
        elif re.fullmatch(r"-?\d*\.\d+|-?\d+\.\d*", item):
            out.append(float(item))
        elif item:
            out.append(item)
    if not out:
        raise _bad(key, f"option {text!r} holds no values", fix=f"write --{key.replace('_', '-')} 1,2")
    return out


def methods_option(text: str) -> dict:
    """``--methods cot,sc@10``: method names, ``@K`` for K paths (the label is the text)."""
    out = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, _, paths = item.partition("@")
        if paths and not paths.isdigit():
            raise _bad("methods", f"option entry {item!r}: {paths!r} is not a number of paths",
                       fix="write --methods cot,sc@10")
        out[item.replace("@", "")] = {"method": name, **({"paths": int(paths)} if paths else {})}
    return out


def prompts_option(text: str) -> dict:
    """``--prompts default,FILE``: prompt files (label: the file's stem), ``default`` for the data's own."""
    out = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        out[item if item == "default" else Path(item).stem] = {} if item == "default" else {"file": item}
    return out


# --- the grid ------------------------------------------------------------------------------------------

def _method_config(choice: MethodChoice, temperature: float, seed: int) -> MethodConfig:
    return MethodConfig(method=choice.method, paths=choice.paths, temperature=temperature, top_k=choice.top_k,
                        max_new_tokens=choice.max_new_tokens, seed=seed, calculator=choice.calculator,
                        params=choice.params)


@dataclass(frozen=True)
class Cell:
    """One point of the grid and the run dir that answers it (several cells may share one run)."""

    config: str  # the configuration's label: every axis but the replicates (seed, order)
    prompt: str
    method: str
    shots: int | None
    temperature: float | None  # None: the method does not sample
    order: int | None
    seed: int
    run: str  # the run dir's name under runs/

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass(frozen=True)
class PlannedRun:
    name: str
    prompt: PromptChoice
    template: Template
    method: MethodConfig


@dataclass
class Plan:
    cells: list[Cell]
    runs: list[PlannedRun]  # distinct runs, in the order they run
    configs: dict[str, list[Cell]]  # label -> its cells, in the spec's order


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "-".join(p for p in parts if p))


def _cell(spec: SweepSpec, seed: int, order: int | None, prompt: PromptChoice, choice: MethodChoice,
          shots: int | None, temperature: float) -> tuple[Cell, PlannedRun]:
    """One grid point, and its run: normalised so that points that cannot differ share a run."""
    cfg = _method_config(choice, temperature, seed)
    sampled = cfg.sample
    if not sampled:  # greedy: the seed and temperature change nothing decoded
        cfg = replace(cfg, temperature=MethodConfig.temperature, seed=spec.seeds[0])
    seeded_shots = spec.shot_choice == "seeded" and shots is not None
    template = Template(shots=shots, order=None if shots in (0, 1) else order,  # one exemplar has no order
                        shots_seed=seed if seeded_shots else None, instruction=prompt.instruction,
                        answer_instruction=prompt.answer_instruction)
    selection = {"data": spec.data, "offset": spec.offset, "limit": spec.limit, "sample": spec.sample,
                 "sample_seed": spec.sample_seed}
    identity = json.dumps({"selection": selection, "prompt": prompt.file, "template": template.describe(),
                           "method": cfg.to_dict()}, sort_keys=True)
    shots_text = "all" if shots is None else str(shots)
    config = "/".join([prompt.label, choice.label, f"shots={shots_text}"]
                      + ([f"T={temperature:g}"] if sampled else []))
    name = _slug(prompt.label, choice.label, f"shots{shots_text}", f"T{temperature:g}" if sampled else "",
                 f"order{'file' if template.order is None else template.order}",
                 f"seed{seed}" if sampled or seeded_shots else "",
                 hashlib.sha256(identity.encode()).hexdigest()[:8])
    cell = Cell(config, prompt.label, choice.label, shots, temperature if sampled else None, order, seed,
                name)
    return cell, PlannedRun(name, prompt, template, cfg)


def plan_sweep(spec: SweepSpec) -> Plan:
    """The grid's cells, grouped by configuration, and the distinct runs in the order that shares work:
    replicate by replicate (seed, then order), every configuration once per replicate."""
    cells: list[Cell] = []
    runs: dict[str, PlannedRun] = {}
    for point in itertools.product(spec.seeds, spec.orders, spec.prompts, spec.methods, spec.shots,
                                   spec.temperatures):
        cell, run = _cell(spec, *point)
        cells.append(cell)
        runs.setdefault(run.name, run)
    configs: dict[str, list[Cell]] = {}
    for cell in cells:
        configs.setdefault(cell.config, []).append(cell)
    return Plan(cells, list(runs.values()), configs)


@dataclass(frozen=True)
class Estimate:
    questions: int  # per run
    runs: int
    sessions: int  # inference sessions in all (a question's paths in sessions of at most the batch size)
    steps: int  # decoding steps in all, if every path ran to its token limit (an upper bound)


def estimate(spec: SweepSpec, plan: Plan, batch_size: int | None = None) -> Estimate:
    """What the sweep costs at most, in sequential decoding steps: per run, questions x sessions per
    question (ceil(paths / batch size); all K in one session without one) x max_new_tokens. Prefill
    steps and early stops (a path stops at the next 'Q:') are left out: an upper bound on steps, for
    sizing a run on a real swarm (time = steps / steps per second / questions in flight)."""
    from petals_ops.bench.data import load_dataset, select

    problems = select(load_dataset(spec.data).problems, offset=spec.offset, limit=spec.limit,
                      sample=spec.sample, sample_seed=spec.sample_seed)
    sessions = steps = 0
    for run in plan.runs:
        per_question = -(-run.method.paths // min(run.method.paths, batch_size or run.method.paths))
        sessions += per_question * len(problems)
        steps += per_question * len(problems) * run.method.max_new_tokens
    return Estimate(len(problems), len(plan.runs), sessions, steps)


# --- running ---------------------------------------------------------------------------------------------

def preflight(spec: SweepSpec, plan: Plan) -> None:
    """What would fail in some run, checked before the sweep dir is touched: the data and its selection,
    every prompt file, and every template on its prompt (e.g. more shots than exemplars)."""
    from petals_ops.bench.data import default_prompt_for, load_dataset, select
    from petals_ops.bench.prompts import load_prompt_file

    select(load_dataset(spec.data).problems, offset=spec.offset, limit=spec.limit, sample=spec.sample,
           sample_seed=spec.sample_seed)
    prompts = {}
    for run in plan.runs:
        key = run.prompt.label
        if key not in prompts:
            try:
                prompts[key] = load_prompt_file(run.prompt.file or default_prompt_for(spec.data))
            except InputError as e:
                raise _bad(f"prompts.{key}.file", f"is refused: {e.message}", fix=e.fix or "") from None
        try:
            run.template.apply(prompts[key])
        except InputError as e:
            raise _bad("shots", f"is refused for prompts.{key}: {e.message}", fix=e.fix or "") from None


class _SharedBackend:
    """``open_backend`` for run_bench: the first run that has work opens the backend, the others reuse it."""

    def __init__(self):
        self.backend = None

    def __call__(self, kind, ref, peers=(), **kwargs):
        if self.backend is None:
            from petals_ops.client.backends import open_backend

            self.backend = open_backend(kind, ref, peers, **kwargs)
        return contextlib.nullcontext(self.backend)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


class SweepLock(RunStore):
    """The sweep dir's pid lock (one sweep at a time per dir), as a run dir's."""

    job = "bench sweep"

    def acquire(self) -> SweepLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._acquire()
        return self


@dataclass
class SweepResult:
    sweep_dir: Path
    plan: Plan
    results: list[BenchResult]

    @property
    def errors(self) -> int:
        return sum(r.summary.errors for r in self.results)


def write_plan(sweep_dir: Path, spec: SweepSpec, plan: Plan) -> None:
    write_json_atomic(sweep_dir / SWEEP_FILE, {
        "version": SWEEP_VERSION, "spec": spec.raw, "baseline": spec.baseline or next(iter(plan.configs)),
        "cells": [c.to_dict() for c in plan.cells], "runs": [r.name for r in plan.runs]})


def run_sweep(spec: SweepSpec, sweep_dir: str | Path, client: ClientOptions, exec_options: ExecOptions, *,
              gpus: int | None = None, gpu_hour_price: float | None = None,
              on_run: Callable[[int, int, PlannedRun], None] | None = None,
              on_result: Callable[[BenchResult], None] | None = None,
              on_start=None, on_record=None) -> SweepResult:
    """Run (or resume) every run of the plan in order; one backend for all of them."""
    sweep_dir = Path(sweep_dir).expanduser().resolve()
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise InputError(f"--sweep-dir {sweep_dir} is a file", fix="pass a directory")
    plan = plan_sweep(spec)
    exec_options.validate()
    client.validate()
    preflight(spec, plan)
    lock = SweepLock(sweep_dir).acquire()
    shared = _SharedBackend()
    results = []
    try:
        write_plan(sweep_dir, spec, plan)
        for i, run in enumerate(plan.runs):
            if on_run:
                on_run(i, len(plan.runs), run)
            params = BenchParams(data=spec.data, offset=spec.offset, limit=spec.limit, sample=spec.sample,
                                 sample_seed=spec.sample_seed, prompt_file=run.prompt.file,
                                 template=run.template, method=run.method,
                                 run_dir=str(sweep_dir / RUNS_DIR / run.name), client=client,
                                 exec=exec_options, gpus=gpus, gpu_hour_price=gpu_hour_price)
            result = run_bench(params, on_start=on_start, on_record=on_record, open_backend=shared)
            results.append(result)
            if on_result:
                on_result(result)
    finally:
        shared.close()
        lock.close()
    return SweepResult(sweep_dir, plan, results)
