#!/bin/sh
# Both methods on 5 demo problems against the local swarm ('petals-ops swarm local up' first), then the comparison.
set -e
petals-ops bench gsm8k --method cot --limit 5 --max-new-tokens 32 --run-dir runs/local-cot
petals-ops bench gsm8k --method sc --paths 8 --limit 5 --max-new-tokens 32 --run-dir runs/local-sc8
petals-ops bench report runs/local-cot runs/local-sc8 --out runs/local-report
