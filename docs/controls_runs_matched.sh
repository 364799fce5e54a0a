#!/usr/bin/env bash
# Part 6 of docs/REPRODUCTION.md: the controlled study corrected, from the repository root.
# Written, and committed, before its first run.  What changed against Part 5 (docs/controls_runs_1000.sh):
# - (c) runs at the matched effective rate (--lr-scale matched, MATH §7.7): lr 2 / (out-std^4) at out-std 0.3
#   on both halves, the rate of (a), instead of lr 1 (about 1/250 of it);
# - every run evaluates the training loss on one fixed subset per data set (the same rows for every seed and
#   width; Part 5 drew them from the seed), so that the tables' paired per-seed ratios compare like with like;
# - the synthetic tasks are also drawn a second time (--data-seed 1).
# Every sweep: Numba backend, seeds 0-4, 1000 SGD steps, batch 20, evaluation every 50 steps on 500 training
# rows and the whole test set.  Verdict rule and descriptive statistic: experiments/plots.py
# (acceleration_verdict, unchanged since Part 4; inconclusive_sweep and first_step_all_below, fixed with this
# script).  Sweeps run in the order below, most decisive first; each resumes where it stopped (--resume).
# Second revision (after gp-C0.3M, gp-C0.3MD, mi2-32-C0.3M and mi2-32-C0.3MD had finished and while gp-A6 ran):
# the common-rate sweeps <task>-C0.3MC were added (the issue's "largest common rate that every width survives",
# missing from the first revision), and (c) on the autoencoders and MNIST was moved ahead of the remaining (a) / (b)
# reruns.  Nothing else changed.
set -euo pipefail
OUT=${OUT:-runs/c6}
DATA=${DATA:-../shared/datasets}
COMMON="--backend ${BACKEND:-cpu} --seeds 0,1,2,3,4 --steps ${STEPS:-1000} --eval-every 50 --eval-size 500"
J=${J:-1}
SYN2K="--train-size 2000 --test-size 2000"
sweep() {   # finished (tables.md written at the end): skip; started: resume; else start.  $ONLY: names to run
    local out=${*: -1}
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $(basename "$out") "* ]]; then return; fi
    [ -f "$out/tables.md" ] && { echo "[$(date +%T)] done already: $out"; return; }
    if [ -f "$out/sweep.json" ]; then
        echo "[$(date +%T)] cli.py sweep --resume $out"; python cli.py sweep --resume "$out" -j "$J" || echo "[$(date +%T)] FAILED: $out"
    else
        echo "[$(date +%T)] cli.py sweep $*"; python cli.py sweep $COMMON -j "$J" "$@" || echo "[$(date +%T)] FAILED: $out"
    fi
}
# Added at the second revision (see below): the common-rate sweep of a task, at the largest rate that every width
# survives in the probe of its per-width sweep <name>D (the minimum over widths of "largest_stable" in that sweep's
# lr_probe.json, in multiples of the matched rate); it runs after that sweep.
common() {
    local out=${*: -1}
    local probe="${out%C}D/lr_probe.json"
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $(basename "$out") "* ]]; then return; fi
    if [ ! -f "$probe" ]; then echo "[$(date +%T)] no probe $probe yet: skipping $out"; return; fi
    local rate
    rate=$(python -c "import json, sys; print(min(w['largest_stable'] for w in json.load(open(sys.argv[1]))['widths'].values()))" "$probe")
    sweep "${@:1:$#-2}" --lr "$rate" --out "$out"
}
W="inf,10,50,100,200,500"
GP="--dataset synthetic --d0 16 $SYN2K --widths $W"
MI="--dataset multi-index --d0 32 --latent-dim 2 $SYN2K --widths inf,2,10,50,100,200,500"
LAE="--dataset manifold --task autoencoder --d0 16 --latent-dim 4 --activation linear $SYN2K --widths inf,16,50,100,200,500"
AE="--dataset manifold --task autoencoder --d0 16 --latent-dim 4 $SYN2K --widths inf,4,10,50,100,200,500"
MNIST="--dataset mnist --data-dir $DATA --train-size 2000 --test-size 1000 --widths $W"
SMALL="--out-std 0.3 --lr-scale matched"
PW="--lr-policy per-width --lr-fraction 0.5 --lr-probe-steps 50"

sweep $GP $SMALL --lr 2 --out $OUT/gp-C0.3M                 # (c) deep GP, matched rate (that of gp-A)
sweep $GP $SMALL $PW --out $OUT/gp-C0.3MD                   # (c)+(d) per-width rates, in units of the matched rate
common $GP $SMALL --out $OUT/gp-C0.3MC                      # (c) at the largest rate every width survives
sweep $MI $SMALL --lr 2 --out $OUT/mi2-32-C0.3M             # (c) multi-index k = 2, d0 = 32, matched rate
sweep $MI $SMALL $PW --out $OUT/mi2-32-C0.3MD
common $MI $SMALL --out $OUT/mi2-32-C0.3MC
sweep $GP --lr 2 --out $OUT/gp-A6                           # (a) deep GP, fixed subset
sweep $LAE $SMALL --lr 0.5 --out $OUT/linae-C0.3M           # (c) linear autoencoder (rate of linae-A)
sweep $LAE $SMALL $PW --out $OUT/linae-C0.3MD
common $LAE $SMALL --out $OUT/linae-C0.3MC
sweep $AE $SMALL --lr 1 --out $OUT/ae4-C0.3M                # (c) ReLU autoencoder (rate of ae4-A)
sweep $AE $SMALL $PW --out $OUT/ae4-C0.3MD
common $AE $SMALL --out $OUT/ae4-C0.3MC
sweep $MNIST $SMALL --lr 4 --out $OUT/mnist-C0.3M           # (c) MNIST (rate of mnist-A)
sweep $MNIST $SMALL $PW --out $OUT/mnist-C0.3MD
common $MNIST $SMALL --out $OUT/mnist-C0.3MC
sweep $GP --lr 2 --data-seed 1 --out $OUT/gp-A6d1           # (a) second data draw
sweep $MI --lr 2 --out $OUT/mi2-32-A6                       # (a) multi-index, fixed subset
sweep $MI --lr 2 --data-seed 1 --out $OUT/mi2-32-A6d1
sweep $GP --lr 2 --center --out $OUT/gp-B6                  # (b)
sweep $MI --lr 2 --center --out $OUT/mi2-32-B6
