"""GSM8K Chain-of-Thought and Self-Consistency experiments through a Petals swarm (``petals-ops bench``).

One module per concern: :mod:`data` (problems), :mod:`prompts` (few-shot prefixes), :mod:`extraction`
(answers and gold), :mod:`methods` (the generation loop: CoT = 1 greedy path, SC = K sampled paths),
:mod:`store` (run dir, records.jsonl, resume), :mod:`stats` (Wilson, maj@k), :mod:`runner` (retries,
timeouts, concurrency) and :mod:`report` (summary.json, report.md, plot). Nothing here imports torch or
petals at module level.
"""
