"""petals-ops tune: prompt tuning through a real local swarm (issue 9).

One swarm for the whole file: the shipped arithmetic model, 2 block ranges x 2 replicas (4 CPU servers),
so the last test can kill the servers a run routes through and training still completes. Nothing is mocked.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

ARITH_MODEL = Path(__file__).resolve().parents[1] / "petals_ops" / "data" / "models" / "tiny-bloom-arith"


@pytest.fixture(scope="module")
def tune_swarm(swarm_factory):
    return swarm_factory(servers=2, replicas=2, model_dir=ARITH_MODEL)


def swarm_args(swarm) -> list[str]:
    return ["--swarm-dir", swarm.run_dir]


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def write_shifted_task(directory: Path) -> tuple[Path, Path]:
    """The arithmetic task with gain/loss verbs the model never saw ('collects 3', 'drops 2'): 0-shot it
    gets the signs wrong (measured: 4 of 100 right); that is what the tuned prompts have to fix."""
    from petals_ops import synthetic_math as sm

    gains, losses = ("collects {n}", "receives {n}", "earns {n}"), ("drops {n}", "eats {n}", "breaks {n}")
    rng, seen = random.Random(5), set()

    def rows(n: int, weights: dict) -> str:
        out = []
        old = sm.GAINS, sm.LOSSES
        sm.GAINS, sm.LOSSES = gains, losses
        try:
            while len(out) < n:
                p = sm.make_problem(rng, step_weights=weights)
                if p.question not in seen:
                    seen.add(p.question)
                    worked = sm.rationale(p, rng).rsplit(" The answer is", 1)[0]
                    out.append(json.dumps({"question": p.question, "answer": f"{worked}\n#### {p.answer}"}))
        finally:
            sm.GAINS, sm.LOSSES = old
        return "\n".join(out) + "\n"

    train, test = directory / "shift_train.jsonl", directory / "shift_test.jsonl"
    train.write_text(rows(1500, sm.TRAIN_STEP_WEIGHTS))
    test.write_text(rows(100, sm.HELD_OUT_STEP_WEIGHTS))
    return train, test


@pytest.mark.parametrize("mode", ["ptune", "deep_ptune"])
def test_swarm_step_gives_in_process_gradients(tune_swarm, mode):
    """One training step through the swarm == the same step in-process: loss and prompt gradients."""
    from petals_ops.tune.examples import collate, load_pairs
    from petals_ops.tune.model import init_prompts, open_tunable, prompt_parameters, step_loss

    ref = tune_swarm.model
    pairs = load_pairs("arith:train", 8)
    results = {}
    for kind in ("petals", "local"):
        loaded = open_tunable(kind, ref, tune_swarm.initial_peers, mode, 4)
        try:
            init_prompts(loaded.model, mode, seed=3)
            params = prompt_parameters(loaded.model, mode)
            if mode == "deep_ptune":  # a non-zero start, so the deep prompts change the forward pass
                with __import__("torch").no_grad():
                    params["transformer.intermediate_prompt_embeddings.weight"].normal_(0, 0.05, generator=__import__(
                        "torch").Generator().manual_seed(1))
            for p in params.values():
                p.requires_grad_(True)
            ids, labels, _ = collate(loaded.tokenizer, pairs.batch(1, 4, 0), 128)
            loss = step_loss(loaded.model, ids, labels)
            loss.backward()
            results[kind] = (float(loss), {k: p.grad.clone() for k, p in params.items()})
        finally:
            loaded.close()
    (swarm_loss, swarm_grads), (local_loss, local_grads) = results["petals"], results["local"]
    assert swarm_loss == pytest.approx(local_loss, rel=1e-5)
    assert swarm_grads.keys() == local_grads.keys()
    for key in swarm_grads:
        assert float(local_grads[key].abs().max()) > 1e-6, key  # a real gradient, not zeros on both sides
        assert (swarm_grads[key] - local_grads[key]).abs().max() <= 1e-4 * local_grads[key].abs().max() + 1e-7, key
