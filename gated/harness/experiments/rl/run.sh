#!/usr/bin/env bash
# The memory-RL experiment of docs/rl.md: LSTM vs UR-LSTM, 3 seeds, one fixed agent config
# (gated/harness/experiments/rl/agent.json) for every environment; budgets in environment steps per run.
# 2 runs at a time, 1 thread each (about 20 minutes on 2 shared CPU cores).
set -euo pipefail
OUT=${1:-runs/rl-memory}
CMP="gated rl compare --config gated/harness/experiments/rl/agent.json --variants - UR --seeds 0 1 2 --jobs 2 --out $OUT"
nice -n 5 $CMP --envs popgym-RepeatFirstEasy-v0 --steps 150000
nice -n 5 $CMP --envs MiniGrid-MemoryS7-v0 --steps 150000
nice -n 5 $CMP --envs popgym-ConcentrationEasy-v0 --steps 100000
cp "$OUT/curves.png" docs/figures/rl_memory_curves.png

# Follow-up (docs/rl.md, "BPTT over whole episodes"): RepeatFirstEasy with one rollout = one
# episode (51 steps), so truncated BPTT reaches the first card; fresh seeds; two learning rates.
ALIGNED="gated rl compare --config gated/harness/experiments/rl/repeat-first-aligned.json --envs popgym-RepeatFirstEasy-v0 --variants - UR --seeds 100 101 102 --jobs 2 --steps 64000"
nice -n 5 $ALIGNED --out "$OUT-aligned"
nice -n 5 $ALIGNED --lr 0.003 --out "$OUT-aligned-lr3e-3"
cp "$OUT-aligned/curves.png" docs/figures/rl_repeatfirst_aligned.png
