"""Prompt tuning through the swarm (``petals-ops tune``): soft prompts trained on the client, blocks frozen.

One module per concern: :mod:`spec` (what a run is, checked), :mod:`examples` (question+rationale pairs,
batches that depend only on the seed and the step), :mod:`model` (the model with trainable prompts, through
the swarm or in-process, and the loss), :mod:`prompts` (prompt files: save, load, verify, id),
:mod:`store` (the resumable run dir) and :mod:`trainer` (the loop). Heavy imports stay inside functions.
"""
