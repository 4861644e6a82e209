#!/bin/sh
# 8-shot CoT (greedy) on the GSM8K test split through a BLOOM-176B swarm.
# The prompt is the default: the packaged 8-shot set (petals_ops/data/prompts/gsm8k_cot_8shot_petals_ops.txt).
exec petals-ops bench gsm8k --initial-peers "$PEERS" --model "$MODEL" --data "${GSM8K:-gsm8k:test}" \
  --method cot --max-new-tokens 256 \
  --concurrency 4 --retries 3 --timeout 900 --run-dir runs/bloom-gsm8k-cot "$@"
