"""The main job on the embedded default: a local swarm brought up, used and brought down again.

``petals-ops demo`` runs these steps in order, printing what each shows; the swarm is stopped at the
end even when a step fails. Each capability adds its step to :data:`STEPS`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from petals_ops.util.output import info


@dataclass
class DemoContext:
    work_dir: Path
    swarm: object = None  # petals_ops.lab.local_swarm.LocalSwarm once up


def _status(ctx: DemoContext) -> None:
    from petals_ops.swarm.health import take_snapshot

    snap = take_snapshot(ctx.swarm.initial_peers, ctx.swarm.model)
    print(json.dumps(snap.coverage(), indent=2))


def _generate(ctx: DemoContext) -> None:
    from petals_ops.client import generation, loading

    prompt = ("Q: Tom has 23 apples. Tom buys 5 more and then gives 4 to a friend. "
              "How many apples does Tom have now?\nA:")
    with loading.load_swarm_model(ctx.swarm.model, ctx.swarm.initial_peers) as loaded:
        result = generation.generate(loaded, prompt, max_new_tokens=32)
    print(f"prompt: {prompt!r}\ncompletion (greedy): {result.texts[0].split(chr(10))[0]!r}")
    print(f"{result.new_tokens} tokens through the swarm in {result.seconds:.2f} s")


def _bench(ctx: DemoContext) -> None:
    from petals_ops.bench import demo_step

    demo_step.run(ctx)


def _exporter(ctx: DemoContext) -> None:
    from petals_ops.monitoring.demo import show_exporter

    show_exporter(ctx.swarm)


STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("swarm status", _status),
    ("generate through the swarm", _generate),
    ("bench: CoT and SC on the arithmetic model's held-out problems, paired, with error analysis", _bench),
    ("Prometheus exporter: live metrics of the swarm", _exporter),
]


def run_demo(work_dir: str | Path, *, servers: int = 2) -> None:
    from petals_ops.lab import local_swarm
    from petals_ops.lab.tiny_model import ARITH_MODEL_DIR

    ctx = DemoContext(work_dir=Path(work_dir).resolve())
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    swarm_dir = ctx.work_dir / "swarm"
    info(f"== local swarm up ({servers} CPU servers, the shipped tiny BLOOM trained on arithmetic) "
         f"in {swarm_dir}")
    ctx.swarm = local_swarm.up(swarm_dir, servers=servers, model_dir=ARITH_MODEL_DIR)
    info(f"   ready in {ctx.swarm.ready_seconds:.1f} s; initial peers {' '.join(ctx.swarm.initial_peers)}")
    try:
        for title, step in STEPS:
            info(f"== {title}")
            step(ctx)
    finally:
        info("== local swarm down")
        try:
            local_swarm.down(swarm_dir)
        except Exception as e:  # say so: a swarm left running must not go unnoticed
            info(f"warning: the local swarm did not stop cleanly: {e}; run 'petals-ops swarm local down "
                 f"--swarm-dir {swarm_dir}'")
