"""A prompt longer than the servers' ``inference_max_length`` (issue 12, item 7): a one-line usage error
that names the limit. Against our local swarm the limit is known (we started the servers), so it is found
before any network work; against explicit peers the servers' refusal is turned into the same kind of line."""

from __future__ import annotations

import time

from petals_ops.lab.local_swarm import SERVER_DEFAULTS
from tests.helpers import assert_one_line_error

LIMIT = SERVER_DEFAULTS["inference_max_length"]
LONG = "x " * (LIMIT + 100)  # one token per "x" and per space in BLOOM's tokenizer: far over the limit


def test_generate_refuses_a_prompt_over_the_local_servers_limit_before_connecting(run_cli, local_swarm):
    started = time.monotonic()
    result = run_cli("generate", "--swarm-dir", local_swarm.run_dir, LONG, "--max-new-tokens", 8)
    line = assert_one_line_error(result, f"inference_max_length {LIMIT}", "--max-new-tokens 8", code=2)
    assert "shorten the prompt" in line
    assert "WARN" not in result.stderr, "found before petals had anything to warn about"
    assert time.monotonic() - started < 30, "no swarm connection, no retries"


def test_bench_refuses_a_prompt_set_over_the_limit_naming_the_question(run_cli, local_swarm, tmp_path):
    prompt = tmp_path / "long.txt"
    prompt.write_text(f"Q: {LONG}\nA: 1 + 1 = 2. The answer is 2.\n")
    result = run_cli("bench", "gsm8k", "--swarm-dir", local_swarm.run_dir, "--data", "arith:test",
                     "--limit", 2, "--prompt-file", prompt, "--run-dir", tmp_path / "run")
    assert_one_line_error(result, "the prompt of question", f"inference_max_length {LIMIT}", code=2)


def test_a_refused_bench_pins_no_config_and_the_corrected_command_runs(run_cli, local_swarm, tmp_path):
    """Issue 23.5: --max-new-tokens over the servers' limit is refused before the run dir is touched, so
    the corrected command is not refused as 'a different config'."""
    base = ["bench", "gsm8k", "--swarm-dir", local_swarm.run_dir, "--data", "arith:test", "--limit", 1,
            "--run-dir", tmp_path / "run"]
    result = run_cli(*base, "--max-new-tokens", 9000)
    assert_one_line_error(result, f"inference_max_length {LIMIT}", "--max-new-tokens 9000", code=2)
    assert not (tmp_path / "run").exists()
    result = run_cli(*base, "--max-new-tokens", 4, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "different config" not in result.stderr


def test_the_servers_refusal_through_explicit_peers_is_one_line_naming_their_limit(run_cli, local_swarm):
    result = run_cli("generate", "--initial-peers", local_swarm.initial_peers[0],
                     "--model", local_swarm.model_dir, "--max-retries", 1, LONG, timeout=180)
    assert_one_line_error(result, f"inference_max_length is {LIMIT}", "shorten the prompt", code=2)


def test_tuned_prompt_positions_count_against_the_limit(tiny_model_dir):
    """The bench's check adds the positions tuned prompts take in the session (the model prepends them)."""
    import pytest

    from petals_ops.bench.data import Problem
    from petals_ops.bench.methods.base import MethodConfig
    from petals_ops.bench.prompts import ZERO_SHOT
    from petals_ops.bench.runner import require_prompts_fit
    from petals_ops.util.errors import InputError
    from petals_ops.client.loading import load_tokenizer
    from petals_ops.client.models import resolve_model

    ref = resolve_model(str(tiny_model_dir))
    problem = Problem("p:1", 1, "x " * 50, "1")
    tokens = len(load_tokenizer(ref)(ZERO_SHOT.render(problem.question))["input_ids"])
    cfg = MethodConfig(max_new_tokens=8)
    limit = tokens + 8
    require_prompts_fit(ref, ZERO_SHOT, [problem], cfg, limit)  # fits exactly
    with pytest.raises(InputError, match="with 4 tuned prompt positions"):
        require_prompts_fit(ref, ZERO_SHOT, [problem], cfg, limit, reserved=4)
