#!/bin/sh
# Self-Consistency, 10 sampled paths per question (T=0.7, top-k 40), majority vote; maj@k for k=1..10 in the report.
# The prompt is the default: the packaged 8-shot set (petals_ops/data/prompts/gsm8k_cot_8shot_petals_ops.txt).
exec petals-ops bench gsm8k --initial-peers "$PEERS" --model "$MODEL" --data "${GSM8K:-gsm8k:test}" \
  --method sc --paths 10 --temperature 0.7 --top-k 40 \
  --max-new-tokens 256 --seed 0 --concurrency 2 --retries 3 --timeout 1800 --run-dir runs/bloom-gsm8k-sc10 "$@"
