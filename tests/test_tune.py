"""petals-ops tune: prompt tuning through a real local swarm (issue 9).

One swarm for the whole file: the shipped arithmetic model, 2 block ranges x 2 replicas (4 CPU servers),
so the last test can kill the servers a run routes through and training still completes. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import cli_env

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


NEW_GAINS = ("collects {n}", "receives {n}", "earns {n}", "picks up {n}")


def write_shifted_task(directory: Path, train: int = 1500, test: int = 100) -> tuple[Path, Path]:
    """A new domain for the arithmetic model: every event is a gain, told with verbs it never saw
    ('collects 3', 'earns 2'). 0-shot it subtracts them (measured: 0-8 of 100 right); one fact about the
    domain (they all add) is what tuned prompts can carry."""
    from petals_ops.lab import synthetic_math as sm

    rng, seen = random.Random(5), set()

    def rows(n: int, steps: tuple[int, ...]) -> str:
        out = []
        while len(out) < n:
            name, item, start = rng.choice(sm.NAMES), rng.choice(sm.ITEMS), rng.randint(10, 30)
            changes = tuple(rng.randint(1, 5) for _ in range(rng.choice(steps)))
            acts = [rng.choice(NEW_GAINS).format(n=c) for c in changes]
            told = acts[0] if len(acts) == 1 else ", ".join(acts[:-1]) + " and then " + acts[-1]
            question = f"{name} has {start} {item}. {name} {told}. How many {item} does {name} have now?"
            if question in seen:
                continue
            seen.add(question)
            worked = sm.rationale(sm.Problem(question, start, changes), rng).rsplit(" The answer is", 1)[0]
            out.append(json.dumps({"question": question, "answer": f"{worked}\n#### {start + sum(changes)}"}))
        return "\n".join(out) + "\n"

    train_path, test_path = directory / "gains_train.jsonl", directory / "gains_test.jsonl"
    train_path.write_text(rows(train, (1, 2, 3)))
    test_path.write_text(rows(test, (2, 3)))
    return train_path, test_path


@pytest.mark.parametrize("mode", ["ptune", "deep_ptune"])
def test_swarm_step_gives_in_process_gradients(tune_swarm, mode):
    """One training step through the swarm == the same step in-process: loss and prompt gradients; and
    greedy decoding with those prompts (the bench's loop, an inference session) gives the same tokens."""
    import torch

    from petals_ops.client.backends import Backend
    from petals_ops.bench.hooks import decode_hooks
    from petals_ops.client.decoding import DecodeSpec, Sampling, decode_batch
    from petals_ops.tune.examples import collate, load_pairs
    from petals_ops.client.tuned_model import init_prompts, open_tunable, prompt_parameters, step_loss

    ref = tune_swarm.model
    pairs = load_pairs("arith:train", 8)
    results = {}
    for kind in ("petals", "local"):
        loaded = open_tunable(kind, ref, tune_swarm.initial_peers, mode, 4)
        try:
            init_prompts(loaded.model, mode, seed=3)
            params = prompt_parameters(loaded.model, mode)
            if mode == "deep_ptune":  # a non-zero start, so the deep prompts change the forward pass
                with torch.no_grad():
                    params["transformer.intermediate_prompt_embeddings.weight"].normal_(
                        0, 0.05, generator=torch.Generator().manual_seed(1)
                    )
            for p in params.values():
                p.requires_grad_(True)
            ids, labels, _ = collate(loaded.tokenizer, pairs.batch(1, 4, 0), 128)
            loss = step_loss(loaded.model, ids, labels)
            loss.backward()
            question = loaded.tokenizer(pairs.held_out[0][0], return_tensors="pt")["input_ids"]
            decoded = decode_batch(
                Backend(loaded), question, [0], DecodeSpec(Sampling(), 16, decode_hooks()), "q"
            )
            results[kind] = (float(loss.detach()), {k: p.grad.clone() for k, p in params.items()})
            results[kind + "-ids"] = decoded.paths[0].ids
        finally:
            loaded.close()
    (swarm_loss, swarm_grads), (local_loss, local_grads) = results["petals"], results["local"]
    assert results["petals-ids"] == results["local-ids"] and len(results["local-ids"]) > 1
    assert swarm_loss == pytest.approx(local_loss, rel=1e-5)
    assert swarm_grads.keys() == local_grads.keys()
    for key in swarm_grads:
        assert float(local_grads[key].abs().max()) > 1e-6, key  # a real gradient, not zeros on both sides
        assert (swarm_grads[key] - local_grads[key]).abs().max() <= 1e-4 * local_grads[
            key
        ].abs().max() + 1e-7, key


def tune_cmd(swarm, run_dir, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "petals_ops.cli.main",
        "tune",
        "gsm8k",
        *swarm_args(swarm),
        "--run-dir",
        str(run_dir),
        *map(str, extra),
    ]


def read_tune(run_dir) -> dict:
    try:
        return json.loads((Path(run_dir) / "tune.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.fixture(scope="module")
def gains_task(tmp_path_factory):
    return write_shifted_task(tmp_path_factory.mktemp("gains"))


@pytest.fixture(scope="module")
def tuned_run(tune_swarm, gains_task, tmp_path_factory):
    """ptune, N=8, 40 steps of 16 pairs through the swarm on the new-verbs domain (fixed seed)."""
    run_dir = tmp_path_factory.mktemp("tuned") / "run"
    train, _ = gains_task
    result = subprocess.run(
        tune_cmd(
            tune_swarm,
            run_dir,
            "--data",
            train,
            "--mode",
            "ptune",
            "--pre-seq-len",
            8,
            "--steps",
            40,
            "--batch-size",
            16,
            "--lr",
            0.03,
            "--eval-every",
            20,
            "--eval-size",
            32,
            "--checkpoint-every",
            20,
            "--max-length",
            96,
        ),
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env=cli_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_tuning_through_the_swarm_lowers_the_loss(tuned_run, tune_swarm):
    run_dir, result = tuned_run
    summary = read_tune(run_dir)
    losses = summary["losses"]
    assert summary["step"] == 40 and len(losses) == 40
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5, losses  # measured: 1.6 -> 0.2
    assert summary["evals"][-1]["loss"] < summary["evals"][0]["loss"] * 1.2
    assert summary["best"]["step"] in (20, 40) and summary["best"]["id"]
    assert (
        set(summary["servers"]) and summary["timing"]["forward_s"] > 0 and summary["timing"]["backward_s"] > 0
    )
    assert (
        summary["mode"] == "ptune"
        and summary["pre_seq_len"] == 8
        and summary["dht_prefix"] == "tiny-bloom-arith"
    )
    for name in ("best.safetensors", "prompts.safetensors", "loss.png", "config.json", "checkpoint.pt"):
        assert (run_dir / name).is_file(), name
    assert "[40/40] loss" in result.stderr  # the progress lines (not a terminal)


def test_tuned_prompts_beat_zero_shot_on_held_out_problems(
    tuned_run, tune_swarm, gains_task, run_cli, tmp_path
):
    """bench gsm8k --zero-shot on 40 held-out problems of the new domain, without the tuned prompts
    (in-process: the backends agree token for token, see generate below) and with them through the swarm.
    Measured: 0 vs 15 of 50 (through the swarm); the test wants a gain of 8 or more of 40."""
    run_dir, _ = tuned_run
    _, test = gains_task
    common = [
        "bench",
        "gsm8k",
        *swarm_args(tune_swarm),
        "--data",
        test,
        "--zero-shot",
        "--limit",
        40,
        "--max-new-tokens",
        48,
        "--output",
        "json",
    ]
    plain = run_cli(*common, "--run-dir", tmp_path / "plain", "--backend", "local", timeout=600)
    tuned = run_cli(
        *common, "--run-dir", tmp_path / "tuned", "--tuned-prompts", run_dir, "--concurrency", 4, timeout=600
    )
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    base, with_prompts = json.loads(plain.stdout)["correct"], json.loads(tuned.stdout)["correct"]
    assert with_prompts >= base + 8, (base, with_prompts)
    best_id = read_tune(run_dir)["best"]["id"]
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["tuned_prompts"]["id"] == best_id and config["tuned_prompts"]["pre_seq_len"] == 8
    record = json.loads((tmp_path / "tuned" / "records.jsonl").read_text().splitlines()[0])
    assert record["prompt_id"].endswith(f"+tuned@{best_id}")
    # the same run dir with other prompts (none) is refused, as the bench refuses any other config
    again = run_cli(*common, "--run-dir", tmp_path / "tuned", "--backend", "local", timeout=120)
    assert "different config" in one_error_line(again)
    # generate with the tuned prompts, through the swarm and in-process: the same greedy text
    question = "Q: Mia has 12 coins. Mia collects 3 and then earns 2. How many coins does Mia have now?\nA:"
    texts = []
    for backend in ("petals", "local"):
        out = run_cli(
            "generate",
            *swarm_args(tune_swarm),
            question,
            "--max-new-tokens",
            24,
            "--backend",
            backend,
            "--tuned-prompts",
            run_dir,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        texts.append(out.stdout.strip())
    assert texts[0] == texts[1] and texts[0].startswith("12 +"), texts  # it adds (0-shot it subtracts)


def test_bad_input_is_one_line(tuned_run, tune_swarm, tiny_model_dir, run_cli, tmp_path):
    from safetensors.torch import load_file, save_file

    run_dir, _ = tuned_run
    base = ["tune", "gsm8k", *swarm_args(tune_swarm), "--run-dir", tmp_path / "bad", "--data", "arith:train"]
    assert "--pre-seq-len 0 must be at least 1" in one_error_line(run_cli(*base, "--pre-seq-len", 0))
    assert "--mode prefix is unknown" in one_error_line(run_cli(*base, "--mode", "prefix"))
    line = one_error_line(
        run_cli(
            *base, "--batch-size", 16, "--pre-seq-len", 8, "--max-length", 64, "--servers-max-batch-size", 512
        )
    )
    assert "max_batch_size of 512 tokens" in line and "14 rows x 72 tokens" in line, line
    assert not (tmp_path / "bad").exists()  # refused before any work
    # told a larger limit, the run reaches a real server, which refuses (petals/server/task_pool.py): one
    # error line naming the servers' limit (petals' own retry warnings come before it). --max-length 96, not
    # 16: 16 tokens cut every answer token, which is refused before any work (issue 23.8)
    refused = run_cli(
        *base,
        "--pre-seq-len",
        2100,
        "--max-length",
        96,
        "--batch-size",
        1,
        "--steps",
        1,
        "--eval-size",
        2,
        "--servers-max-batch-size",
        100000,
        "--step-retries",
        0,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the servers refused a training request: max_batch_size 2048 tokens"), last
    # prompts tuned on the arithmetic model, for another model
    line = one_error_line(
        run_cli(
            "generate", "Q: 1+1?", "--backend", "local", "--model", tiny_model_dir, "--tuned-prompts", run_dir
        )
    )
    assert "were tuned for model tiny-bloom-arith" in line, line
    line = one_error_line(
        run_cli(
            "bench",
            "gsm8k",
            "--backend",
            "local",
            "--model",
            tiny_model_dir,
            "--data",
            "arith:test",
            "--limit",
            1,
            "--run-dir",
            tmp_path / "b",
            "--tuned-prompts",
            run_dir,
        )
    )
    assert "were tuned for model tiny-bloom-arith" in line and not (tmp_path / "b").exists(), line
    # a prompt file whose tensors are not what it says (another N, another mode)
    tensors = load_file(run_dir / "best.safetensors")
    from safetensors import safe_open

    with safe_open(str(run_dir / "best.safetensors"), framework="pt") as f:
        meta = f.metadata()
    for change, expected in (
        ({"pre_seq_len": "4"}, "does not hold ptune prompts of length 4"),
        ({"mode": "deep_ptune"}, "does not hold deep_ptune prompts"),
    ):
        doctored = tmp_path / "doctored.safetensors"
        save_file(tensors, doctored, metadata={**meta, **change})
        line = one_error_line(
            run_cli(
                "generate",
                *swarm_args(tune_swarm),
                "Q: 1+1?",
                "--backend",
                "local",
                "--tuned-prompts",
                doctored,
            )
        )
        assert expected in line, line
    # resuming a run dir with other hyper-parameters
    line = one_error_line(
        run_cli(
            "tune",
            "gsm8k",
            *swarm_args(tune_swarm),
            "--run-dir",
            run_dir,
            "--data",
            "arith:train",
            "--steps",
            40,
        )
    )
    assert "different config" in line, line


def small_run(swarm, run_dir, *, steps: int, checkpoint_every: int, extra: tuple = ()) -> list[str]:
    """A short arith:train run (4 pairs a step, held-out loss twice) for the fault tests."""
    return tune_cmd(
        swarm,
        run_dir,
        "--data",
        "arith:train",
        "--steps",
        steps,
        "--batch-size",
        4,
        "--checkpoint-every",
        checkpoint_every,
        "--eval-every",
        steps // 2,
        "--eval-size",
        8,
        "--max-length",
        96,
        *extra,
    )


def _wait_for_step(proc, run_dir, step: int, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summary = read_tune(run_dir)
        if summary.get("step", 0) >= step:
            return summary
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint at step {step} within {timeout} s")


def test_kill_9_then_the_same_command_resumes(tune_swarm, tmp_path):
    run_dir = tmp_path / "run"
    cmd = small_run(tune_swarm, run_dir, steps=12, checkpoint_every=3)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        killed_at = _wait_for_step(proc, run_dir, 3)["step"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert killed_at < 12
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=cli_env())
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_tune(run_dir)
    assert summary["step"] == 12 and len(summary["losses"]) == 12
    assert len(summary["resumed_at"]) == 1 and summary["resumed_at"][0] >= killed_at
    assert summary["resumed_at"][0] % 3 == 0
    assert f"resuming at step {summary['resumed_at'][0]} of 12" in result.stderr


def test_killed_server_mid_run_training_completes(tune_swarm, tmp_path):
    """kill -9 one server of each block range while the run routes through them (petals spreads requests over
    the replicas: all four have served by step 2): training goes on through the other replica. Last in this
    file: it leaves the swarm with half its servers."""
    from petals_ops.client import door as petals_door

    run_dir = tmp_path / "run"
    # --client-retries 1: the petals client gives up on the first failed request, so the trainer's own
    # retry (ban the dead peers, redo the step on another route) is what carries the run
    cmd = small_run(tune_swarm, run_dir, steps=16, checkpoint_every=2, extra=("--client-retries", 1))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        progress = _wait_for_step(proc, run_dir, 2)
        by_peer = {
            petals_door.peer_id_of_identity((Path(tune_swarm.run_dir) / f"{p.name}.id").read_bytes()): p
            for p in tune_swarm.servers
        }
        victims = {}
        for peer in progress["servers"]:  # one server that has served, per block range
            victims.setdefault(by_peer[peer].blocks, by_peer[peer])
        assert sorted(victims) == ["0:2", "2:4"], progress["servers"]
        for victim in victims.values():
            os.killpg(victim.pgid, signal.SIGKILL)
        killed_at = read_tune(run_dir)["step"]
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert killed_at < 16 and not any(v.alive() for v in victims.values())
    summary = read_tune(run_dir)
    assert summary["step"] == 16 and len(summary["losses"]) == 16
    # the dead servers were hit (their DHT records outlive them) and the step was retried around them
    killed = {peer for peer, proc_ in by_peer.items() if proc_ in victims.values()}
    assert summary["retries"] >= 1, summary["failures"]
    assert all(set(f["banned"]) <= killed and f["banned"] for f in summary["failures"]), summary["failures"]


def test_inputs_that_give_no_signal_or_garbage_are_one_line(run_cli, tmp_path):
    """Issue 23.8, in-process (local backend, the shipped arithmetic model): a --max-length that cuts every
    answer token, a huge --pre-seq-len, --data DIR, a checkpoint.pt that is not this run's, and prompt
    files with NaN/inf tensors or N = 0. Each is one error line, never a traceback or a run on garbage."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    run = tmp_path / "run"
    base = ["tune", "gsm8k", "--backend", "local", "--model", ARITH_MODEL, "--steps", 2, "--batch-size", 2,
            "--eval-size", 4, "--eval-every", 1, "--checkpoint-every", 1, "--max-length", 96]
    arith = [*base, "--data", "arith:train", "--run-dir", run]

    line = one_error_line(run_cli(*base, "--data", "arith:train", "--run-dir", tmp_path / "cut",
                                  "--max-length", 8))
    assert "cuts every answer token of the held-out pairs" in line and "--max-length" in line, line
    assert not (tmp_path / "cut").exists()
    line = one_error_line(run_cli(*arith, "--pre-seq-len", 10**8))
    assert "--pre-seq-len 100000000 is over 8192" in line, line

    # --data DIR: a GSM8K checkout is read as the bench reads it, but for its train split
    checkout = tmp_path / "gsm8k" / "grade_school_math" / "data"
    checkout.mkdir(parents=True)
    rows = [{"question": f"Tom has {i} apples and gets 1 more. How many?",
             "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(12)]
    (checkout / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = run_cli(*base, "--steps", 1, "--data", tmp_path / "gsm8k", "--run-dir", tmp_path / "dir-run")
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_tune(tmp_path / "dir-run")["data"]["source"].endswith("train.jsonl")
    line = one_error_line(run_cli(*base, "--data", tmp_path, "--run-dir", tmp_path / "no-train"))
    assert "is a directory without train.jsonl" in line, line

    # a real run, then its checkpoint replaced by what is not this run's
    finished = run_cli(*arith)
    assert finished.returncode == 0, finished.stderr[-2000:]
    good = torch.load(run / "checkpoint.pt", weights_only=True)
    key = next(iter(good["prompts"]))
    longer = [*arith[:arith.index("--steps") + 1], 4, *arith[arith.index("--steps") + 2:]]
    for state, needle in (
        ({"step": 1}, "is not a tune checkpoint (it lacks history)"),
        ({**good, "step": 1, "prompts": {key: torch.full_like(good["prompts"][key], float("nan"))}},
         "are not a finite float tensor"),
        ({**good, "step": 1, "prompts": {key: torch.zeros(16, 64)}}, "this run's model and mode take"),
    ):
        torch.save(state, run / "checkpoint.pt")
        config = json.loads((run / "config.json").read_text())
        config["spec"]["steps"] = 4  # resumed with more steps: the loop opens the model and the checkpoint
        (run / "config.json").write_text(json.dumps(config))
        line = one_error_line(run_cli(*longer))
        assert needle in line and "checkpoint.pt" in line, line

    # prompt files: NaN/inf tensors, N = 0
    with safe_open(str(run / "best.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    name = next(iter(tensors))
    for doctored, change, needle in (
        ({name: tensors[name] * float("inf")}, {}, "non-finite values"),
        ({name: tensors[name] * float("nan")}, {}, "non-finite values"),
        ({name: tensors[name][:0]}, {"pre_seq_len": "0"}, "0 prompt vectors"),
    ):
        path = tmp_path / "doctored.safetensors"
        save_file(doctored, path, metadata={**meta, **change})
        line = one_error_line(run_cli("generate", "Q: 1+1?", "--backend", "local", "--model", ARITH_MODEL,
                                      "--tuned-prompts", path))
        assert needle in line, line


def test_the_tune_summary_is_typed_and_tune_json_is_its_json_form(tmp_path):
    """run_tune returns a TuneSummary; tune.json is its to_dict and reads back equal (local backend: the
    shipped arithmetic model in-process, a few steps). A tune.json from before any held-out evaluation
    (best {}) reads as best None; anything else is a one-line error."""
    from petals_ops.client.options import ClientOptions
    from petals_ops.tune.spec import TuneSpec
    from petals_ops.tune.store import load_tune_summary
    from petals_ops.tune.summary import EvalPoint, TuneSummary
    from petals_ops.tune.trainer import TuneParams, run_tune
    from petals_ops.util.errors import InputError

    spec = TuneSpec(data="arith:train", pre_seq_len=4, steps=3, batch_size=2, eval_every=3, eval_size=4,
                    checkpoint_every=3, max_length=96)
    result = run_tune(TuneParams(spec=spec, run_dir=str(tmp_path / "t"),
                                 client=ClientOptions(backend="local", model=str(ARITH_MODEL))))
    s = result.summary
    assert isinstance(s, TuneSummary) and s.step == 3 and len(s.losses) == 3
    assert s.evals and isinstance(s.evals[-1], EvalPoint) and s.best is not None and s.best.id
    assert s.timing.tokens > 0 and s.data.source == "arith:train" and s.hyperparameters["steps"] == 3
    on_disk = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert on_disk == json.loads(json.dumps(s.to_dict()))
    assert load_tune_summary(tmp_path / "t") == s
    before_eval = {**on_disk, "best": {}, "evals": []}
    assert TuneSummary.from_dict(before_eval).best is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tune.json").write_text(json.dumps({**on_disk, "timing": 5}))
    with pytest.raises(InputError, match="not a tune summary"):
        load_tune_summary(tmp_path / "bad")
