#!/usr/bin/env bash
# The sweeps of docs/REPRODUCTION.md Part 5 ("Controls at 2000 / 2000 points, 1000 steps, 5 seeds"), in the
# order they were run, from the repository root.  Every sweep: Numba backend, seeds 0-4, 1000 SGD steps,
# batch 20, evaluation every 50 steps on 500 training rows and the whole test set, 2 worker processes.
# The plan (sizes, widths, rates, verdict steps) was fixed before the first run (Part 5, "Plan").
set -euo pipefail
OUT=${OUT:-runs/c5}
DATA=${BOTTLENECK_DATA:-$HOME/.cache/bottleneck-dynamics}   # the data folder (README "Datasets")
# STEPS, BACKEND and J override the horizon, the backend and the worker count (the runs here: the defaults);
# e.g. STEPS=4000 BACKEND=gpu J=1 OUT=runs/c5-4000 for the paper's horizon on a GPU machine.
COMMON="--backend ${BACKEND:-cpu} --seeds 0,1,2,3,4 --steps ${STEPS:-1000} --eval-every 50 --eval-size 500 -j ${J:-2}"
SYN2K="--train-size 2000 --test-size 2000"
sweep() {   # skip a sweep that has finished (its tables.md is written at the end), or not in $ONLY if set
    local out=${*: -1}
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $(basename "$out") "* ]]; then return; fi
    [ -f "$out/tables.md" ] && { echo "[$(date +%T)] done already: $out"; return; }
    echo "[$(date +%T)] cli.py sweep $*"; python cli.py sweep $COMMON --force "$@" || echo "[$(date +%T)] FAILED: $out"
}
W="inf,50,100,200,500"
GP="--dataset synthetic --d0 16 $SYN2K --widths $W"
mi() { echo "--dataset multi-index --d0 $2 --latent-dim $1 $SYN2K --widths inf,$1,10,50,100,200,500"; }
MNIST="--dataset mnist --data-dir $DATA --train-size 2000 --test-size 1000 --widths $W"
PW="--lr-policy per-width --lr-fraction 0.5 --lr-probe-steps 50"

sweep $(mi 2 32) --lr 2 --out $OUT/mi2-32-A                # (g)+(a) multi-index k=2, d0=32, as is
sweep $GP --lr 2 --out $OUT/gp-A                           # (a) deep GP, as is (side by side with the above)
sweep $MNIST --lr 4 --out $OUT/mnist-A                     # (a) MNIST, as is
sweep $(mi 2 32) $PW --out $OUT/mi2-32-D                   # (g)+(d) per-width rates
sweep $GP $PW --out $OUT/gp-D                              # (d) deep GP, per-width rates
# Order changed at 23:58, while mi1-128-A ran and after (a) and (d) had been written up: the sweeps not yet
# started were reordered to reach (b) on MNIST, (c) and (f) before the remaining d0/k points.  No rate,
# width, size or seed was changed.  The original order: mi1-128-A, mi4-32-A, mi2-32-B, gp-B, mnist-B,
# gp-C0.3, mi2-32-C0.3, gp-C0.1, mi2-32-C0.1, ae4-A, mi1-32-A, mi4-128-A, mi2-128-A, mnist-D, mnist-ae-D.
sweep $(mi 1 128) --lr 2 --out $OUT/mi1-128-A              # (g) d0/k = 128
sweep $(mi 4 32) --lr 2 --out $OUT/mi4-32-A                # (g) d0/k = 8
sweep $MNIST --lr 4 --center --out $OUT/mnist-B            # (b) MNIST, centred
sweep $(mi 2 32) --lr 2 --center --out $OUT/mi2-32-B       # (g)+(b) centred
sweep $GP --lr 1 --out-std 0.3 --out $OUT/gp-C0.3          # (c) small initialisation, smaller rate
# gp-C0.3 was stopped after 5 of 25 runs (each took ~4.5x as long as in gp-A); the session then ran only
# ONLY="ae4-A mi2-128-A" before its time ran out
sweep --dataset manifold --task autoencoder --d0 16 --latent-dim 4 $SYN2K --widths inf,4,10,50,100,200,500 \
      --lr 1 --out $OUT/ae4-A                              # (f) ReLU autoencoder on the manifold
sweep $(mi 2 128) --lr 2 --out $OUT/mi2-128-A              # (g) d0/k = 64
sweep $(mi 1 32) --lr 2 --out $OUT/mi1-32-A                # (g) d0/k = 32
# ---- Second session (2026-11-30), written before its first run.  The small-initialisation sweeps now
# run on the closed-form history pass (out-std only rescales the kernels, MATH §2.2; before, they fell
# back to the layer recursion, which made gp-C0.3 4.5-10x slower); gp-C0.3 is rerun from the start.
# Added: (e) at the Part 5 scale, the linear autoencoder on the manifold (Part 4's linae-A, linae-C0.30
# at lr 0.5) with 5 seeds and widths 16-500; (c) on the ReLU autoencoder of ae4-A (ae4-C0.3).  The order below is the order of the runs.
sweep $GP --lr 2 --center --out $OUT/gp-B                  # (b) deep GP, centred
sweep $GP --lr 1 --out-std 0.3 --out $OUT/gp-C0.3          # (c) small initialisation (rerun)
sweep $(mi 2 32) --lr 1 --out-std 0.3 --out $OUT/mi2-32-C0.3
LAE="--dataset manifold --task autoencoder --d0 16 --latent-dim 4 --activation linear $SYN2K --widths inf,16,50,100,200,500 --lr 0.5"
sweep $LAE --out-std 0.3 --out $OUT/linae-C0.3             # (e)+(c) linear autoencoder, small initialisation
# Changed at 02:05, after mi2-32-C0.3 had left every width at the zero predictor's loss for 1000 steps
# (lr 1 is small for out-std 0.3, which scales the kernels by 0.09): (c) with per-width rates added;
# mi2-32-C0.1 (which would learn still less) dropped.  Changed at 02:06, while linae-C0.3 ran (its sweep was
# restarted to resume two runs a bug had stopped): the sweeps that the issue's "done when" needs first
# (linae-A, mnist-ae-D, gp-C0.1), then the others.
sweep $LAE --out $OUT/linae-A                              # (e) linear autoencoder, standard initialisation
sweep --dataset mnist --data-dir $DATA --train-size 1000 --test-size 500 --task autoencoder \
      --widths inf,8,32,128,500 --lr-policy per-width --lr-fraction 0.5 --lr-probe-steps 50 --out $OUT/mnist-ae-D  # (f)
sweep $GP --lr 1 --out-std 0.1 --out $OUT/gp-C0.1          # (c) the second value
sweep --dataset manifold --task autoencoder --d0 16 --latent-dim 4 $SYN2K --widths inf,4,10,50,100,200,500 \
      --lr 1 --out-std 0.3 --out $OUT/ae4-C0.3             # (f)+(c) ReLU autoencoder, small initialisation
sweep $MNIST $PW --out $OUT/mnist-D                        # (d) MNIST
sweep $(mi 2 32) --out-std 0.3 $PW --out $OUT/mi2-32-C0.3D # (c)+(d) small initialisation, per-width rates
sweep $(mi 4 128) --lr 2 --out $OUT/mi4-128-A              # (g) d0/k = 32
