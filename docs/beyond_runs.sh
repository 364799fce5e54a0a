#!/usr/bin/env bash
# REPRODUCTION, "Beyond the paper: momentum and a second bottleneck" (issue 22, item 5), from the repository root.
# Written, and committed, before its first run.
#
# Question: does momentum or a second bottleneck change the acceleration picture (narrower bottlenecks train
# faster, inf slowest) on the deep GP and the multi-index task?
#
# Plan (fixed before the runs):
# - Tasks, as in docs/controls_runs_matched.sh: the deep GP (--dataset synthetic --d0 16) and the multi-index task
#   (--dataset multi-index --d0 32 --latent-dim 2), each at --data-seed 0.
# - Sizes: 1000 training and 1000 test points, training loss on a fixed 500-row subset (--eval-size 500), instead
#   of Part 6's 2000 / 2000.  Why: the simulator's step costs O(history) = O(B t) kernel rows and every evaluation
#   O(rows x history), so a 1000-step run is quadratic in the steps and linear in the evaluated rows; at 2000 / 2000
#   one run took about 3 minutes on the shared 2-core machine, too slow for 6 sweeps of 20 runs in one session.
#   The training set is still 50 times the batch, so 1000 steps are 20 epochs.
# - Every sweep: cpu (Numba) backend, widths inf,10,50,200, seeds 0-4, 1000 SGD steps, batch 20, evaluation every
#   50 steps, one worker (-j 1), the same base rate lr 2 (that of Part 6's (a) sweeps of both tasks).
# - Conditions:
#   (a) plain SGD at lr 2: the baseline at these sizes.
#   (c) a second bottleneck --chain 10: g -> d1 (the swept width) -> f_1 -> 10 -> f_2 (MATH §9), lr 2.  D2 = 10
#       is the narrowest swept width, where Parts 1-6 see the largest effect of a bottleneck; a second narrow
#       layer is the strongest change of the architecture this option allows, so if it leaves the picture
#       unchanged a wider one is unlikely to change it.  Width 10 is then 10 -> 10; widths 50 and 200 are a wider
#       bottleneck followed by a narrower one.  With --width inf every width of the chain is infinite, so the inf
#       row of (c) is the infinite chain g -> f_1 -> f_2 (a deeper infinite network), not (a)'s inf: the ratios of
#       (c) compare each finite chain with the infinite chain of the same depth.
#   (m) heavy-ball momentum --momentum 0.9 at lr 0.2: heavy ball moves at the effective rate lr / (1 - beta), so
#       lr 0.2 matches (a)'s rate 2 (the fair comparison: the same step size in the long run, only the memory of
#       past gradients differs); lr 2 with beta 0.9 would be an effective rate 20, ten times (a)'s.  The (m)
#       sweeps run only where `cli.py sweep` has --momentum (being added to main); otherwise they are skipped
#       with a message and this script, run again later, picks them up.
# - Reading: the tables of each sweep (cli.py plot), the verdict rule experiments.plots.acceleration_verdict and
#   the label experiments.plots.inconclusive_sweep, both unchanged.
# Sweeps run in the order below (the deep GP's three conditions first, so that one task answers both questions
# as early as possible); each resumes where it stopped.
set -euo pipefail
main() {
OUT=${OUT:-runs/beyond}
DATA=${DATA:-../shared/datasets}   # unused by these synthetic tasks; kept for the layout of the other scripts
COMMON="--backend ${BACKEND:-cpu} --seeds 0,1,2,3,4 --steps ${STEPS:-1000} --eval-every 50 --eval-size 500"
J=${J:-1}
SIZE="--train-size 1000 --test-size 1000"
W="inf,10,50,200"
GP="--dataset synthetic --d0 16 $SIZE --widths $W"
MI="--dataset multi-index --d0 32 --latent-dim 2 $SIZE --widths $W"
MOM="--momentum 0.9 --lr 0.2"

sweep $GP --lr 2 --out $OUT/gp-A                 # (a) deep GP, plain SGD
sweep $GP --lr 2 --chain 10 --out $OUT/gp-C10    # (c) deep GP, second bottleneck of width 10
msweep $GP $MOM --out $OUT/gp-M0.9               # (m) deep GP, heavy ball 0.9 at the matched effective rate
sweep $MI --lr 2 --out $OUT/mi-A                 # (a) multi-index
sweep $MI --lr 2 --chain 10 --out $OUT/mi-C10    # (c)
msweep $MI $MOM --out $OUT/mi-M0.9               # (m)
}
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
msweep() {  # (m): only where the sweep command has --momentum
    if python cli.py sweep --help | grep -q -- '--momentum'; then sweep "$@"
    else echo "[$(date +%T)] skipped (cli.py sweep has no --momentum yet): ${*: -1}"; fi
}
main "$@"; exit   # one line: bash has parsed every function before it runs, so a rebase that rewrites this file is safe
