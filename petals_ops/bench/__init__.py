"""GSM8K Chain-of-Thought and Self-Consistency experiments through a Petals swarm (``petals-ops bench``).

One module per concern: :mod:`data` (problems), :mod:`prompts` (few-shot prefixes), :mod:`extraction`
(answers and gold), :mod:`methods` (a sampling policy and an aggregation each: CoT = 1 greedy path, SC =
K sampled paths and a vote), :mod:`figures` (what a method reports, self-described), :mod:`records`
(typed records and summary), :mod:`store` (run dir, records.jsonl, resume), :mod:`stats` (Wilson,
maj@k), :mod:`runner` (the solve loop, retries, timeouts, concurrency), :mod:`report` (summary.json,
report.md, plot), :mod:`analysis` (error categories) over :mod:`arithmetic` and :mod:`loops`. Nothing
here imports torch or petals at module level.
"""
