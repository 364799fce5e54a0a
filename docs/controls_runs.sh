#!/usr/bin/env bash
# The sweeps of docs/REPRODUCTION.md Part 4 ("Controls"), in the order they were run, from the repository root.
# Every sweep: Numba backend, 3 seeds, 600 SGD steps, batch 20, evaluation every 25 steps on 500 training rows.
# Per data set the per-width sweep (D) runs first: its recorded probe (lr_probe.json) fixes the one shared rate
# of the fixed-rate sweeps (A as is, B centred) = half the smallest largest-stable rate over the widths.
set -euo pipefail
OUT=${OUT:-runs/c}
J=${J:-2}
COMMON="--backend cpu --seeds 0,1,2 --steps 600 --eval-every 25 --eval-size 500 -j $J"
shared_rate() {   # half the smallest largest-stable rate of the widths in a per-width sweep's probe
    python -c "import json,sys; p=json.load(open(sys.argv[1])); print(min(w['largest_stable'] for w in p['widths'].values())/2)" "$1/lr_probe.json"
}
sweep() { echo "[$(date +%T)] cli.py sweep $*"; python cli.py sweep "$@" $COMMON; }

run_set() {   # name, then the data options
    local name=$1; shift
    local d="$OUT/$name"
    [ -f "$d-D/sweep.json" ] && [ -f "$d-D/tables.md" ] || sweep "$@" --lr-policy per-width --lr-fraction 0.5 --lr-probe-steps 100 --out "$d-D" --force
    local lr; lr=$(shared_rate "$d-D")
    [ -f "$d-B/tables.md" ] || sweep "$@" --lr "$lr" --center --out "$d-B" --force
    [ -f "$d-A/tables.md" ] || sweep "$@" --lr "$lr" --out "$d-A" --force
}

SYN="--dataset synthetic --train-size 1000 --test-size 500 --d0 16 --widths inf,10,50,200"
run_set lin $SYN --activation linear                                                   # (e) linear
run_set gp  $SYN                                                                        # (a), (b), (d) deep GP
run_set mi2 --dataset multi-index --d0 32 --latent-dim 2 --train-size 1000 --test-size 500 --widths inf,2,10,50,200   # (g)
run_set ae4 --dataset manifold --task autoencoder --d0 16 --latent-dim 4 --train-size 1000 --test-size 500 --widths inf,2,4,10,50  # (f)
run_set mi1 --dataset multi-index --d0 128 --latent-dim 1 --train-size 1000 --test-size 500 --widths inf,1,10,50,200  # (g)
