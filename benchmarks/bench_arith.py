#!/usr/bin/env python
"""The bench on the shipped arithmetic model through a local swarm, measured in one run.

1. CoT and SC (K=10) through the swarm on N held-out questions (arith:test): questions per minute and
   accuracy, and SC's paired gain.
2. SC K=10 batched (one session of 10 rows) against sequential (10 sessions of one row), default settings.
3. Where one greedy token's time goes through the swarm (cProfile of the client, CoT): our decoding loop,
   the petals client, transport (hivemind/p2p and waiting on its event loop), and the servers' own block
   compute (estimated as the same blocks' forward in this process, per token).

Usage: .venv/bin/python benchmarks/bench_arith.py [--questions 30] [--profile-tokens 200]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from petals_ops.lab import local_swarm  # noqa: E402
from petals_ops.bench import report  # noqa: E402
from petals_ops.bench.demo_step import ARITH_SC_TEMPERATURE  # noqa: E402
from petals_ops.bench.methods import MethodConfig  # noqa: E402
from petals_ops.bench.runner import BenchParams, ExecOptions, run_bench  # noqa: E402
from petals_ops.client.options import ClientOptions  # noqa: E402
from petals_ops.lab.tiny_model import ARITH_MODEL_DIR  # noqa: E402


def bench(work: Path, swarm, name: str, method: str, paths: int, questions: int, **exec_kw) -> dict:
    params = BenchParams(data="arith:test", limit=questions, run_dir=str(work / name),
                         client=ClientOptions(swarm_dir=swarm.run_dir),
                         method=MethodConfig(method=method, paths=paths, temperature=ARITH_SC_TEMPERATURE,
                                             max_new_tokens=48),
                         exec=ExecOptions(**exec_kw))
    s = run_bench(params).summary
    out = {"run": name, "accuracy": s.accuracy, "questions_per_minute": s.questions_per_minute,
           "tokens_per_second": s.tokens_per_second, "bench_wall_s": s.wall_seconds,
           "errors": s.errors}
    print(json.dumps(out), flush=True)
    return out


# cProfile buckets, by the file a function lives in (tottime: time spent in the function itself)
BUCKETS = (
    ("ours (decoding loop, tokenizer, sampling)", ("petals_ops/", "tokenizers", "transformers/tokenization")),
    ("petals client", ("petals/",)),
    ("transport (hivemind, p2p, asyncio, waiting on the client's event loop)",
     ("hivemind/", "asyncio", "threading.py", "concurrent/futures", "grpc", "google/protobuf",
      "method 'acquire'", "method 'poll'", "method 'select'", "method 'control'")),
    ("torch (embeddings, LM head, tensor glue on the client)", ("torch/",)),
)


def profile_tokens(swarm, tokens: int) -> dict:
    from petals_ops.client.backends import open_backend
    from petals_ops.client.decoding import DecodeSpec, Sampling, decode_batch

    spec = DecodeSpec(Sampling(), max_new_tokens=tokens)
    prompt = ("Q: Mia has 23 apples. Mia buys 5 more and then gives 4 to a friend. "
              "How many apples does Mia have now?\nA:")
    times = {}
    for kind in ("petals", "local"):
        with open_backend(kind, swarm.model, swarm.initial_peers) as backend:
            ids = backend.tokenizer(prompt, return_tensors="pt")["input_ids"]
            decode_batch(backend, ids, [0], DecodeSpec(Sampling(), 4), "warm")
            profiler = cProfile.Profile() if kind == "petals" else None
            started = time.perf_counter()
            if profiler:
                profiler.enable()
            out = decode_batch(backend, ids, [0], spec, "profile")
            if profiler:
                profiler.disable()
            times[kind] = (time.perf_counter() - started) / out.steps
            if profiler:
                stats = pstats.Stats(profiler)
    total = sum(row[2] for row in stats.stats.values())  # tottime over every function
    split = {name: 0.0 for name, _ in BUCKETS}
    split["other"] = 0.0
    for (filename, _, func), row in stats.stats.items():
        where = f"{filename} {func}"
        name = next((n for n, needles in BUCKETS if any(k in where for k in needles)), "other")
        split[name] += row[2]
    per_token_ms = times["petals"] * 1000
    shares = {name: round(per_token_ms * t / total, 2) for name, t in split.items()}
    return {"swarm_ms_per_token": round(per_token_ms, 2),
            "in_process_ms_per_token": round(times["local"] * 1000, 2),
            "ratio": round(times["petals"] / times["local"], 1), "client_split_ms": shares}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=30)
    ap.add_argument("--profile-tokens", type=int, default=200)
    ap.add_argument("--profile-only", action="store_true", help="skip the bench runs (parts 1 and 2)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-arith-") as tmp:
        work = Path(tmp)
        swarm = local_swarm.up(work / "swarm", servers=2, model_dir=ARITH_MODEL_DIR)
        try:
            if not args.profile_only:
                bench(work, swarm, "warm-up", "cot", 1, 1)
                cot = bench(work, swarm, "cot", "cot", 1, args.questions)
                sc = bench(work, swarm, "sc", "sc", 10, args.questions)
                seq = bench(work, swarm, "sc-sequential", "sc", 10, args.questions, batch_size=1)
                _, _, (pair,) = report.compare([work / "cot", work / "sc"], work / "cmp")
            prof = profile_tokens(swarm, args.profile_tokens)
        finally:
            local_swarm.down(work / "swarm")
    print(f"one greedy token: {prof['swarm_ms_per_token']} ms through the swarm "
          f"vs {prof['in_process_ms_per_token']} ms in-process ({prof['ratio']}x); "
          f"client-side split (ms/token): {json.dumps(prof['client_split_ms'])}")
    if args.profile_only:
        return
    c = pair.comparison
    print(f"through the swarm, {args.questions} held-out questions: CoT {100 * cot['accuracy']:.1f}% at "
          f"{cot['questions_per_minute']:.1f} questions/min; SC K=10 {100 * sc['accuracy']:.1f}% at "
          f"{sc['questions_per_minute']:.1f} questions/min; SC - CoT {100 * c.diff:+.1f} pts "
          f"[{100 * c.diff_ci95[0]:+.1f}, {100 * c.diff_ci95[1]:+.1f}], McNemar p {c.mcnemar_p:.3g}")
    print(f"SC K=10 batched {sc['bench_wall_s']:.1f} s vs sequential {seq['bench_wall_s']:.1f} s: "
          f"{seq['bench_wall_s'] / sc['bench_wall_s']:.2f}x (goal >= 4x); identical accuracy: "
          f"{sc['accuracy'] == seq['accuracy']}")


if __name__ == "__main__":
    main()
