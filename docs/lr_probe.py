"""Learning-rate probe used for docs/REPRODUCTION.md (run from the repository root).

    python docs/lr_probe.py OUT_DIR synthetic mnist cifar      # MNIST/CIFAR files from $BOTTLENECK_DATA

For each data set and each rate of the doubling grid GRID, one run per width (seed 0, the sizes of the
report) is trained for PROBE_STEPS steps.  A rate is *stable* for a width when the run ends without a
NaN/inf and its final evaluated training loss is below its initial one.  The rate used in the report is
half the largest grid rate that is stable for every width together with all smaller grid rates.
Prints one JSON line per run and one summary line per data set.  Two runs at a time.
"""
import csv
import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.getcwd())

from concurrent.futures import ProcessPoolExecutor  # noqa: E402

from experiments.train import TrainConfig, TrainError, train  # noqa: E402

PROBE_STEPS = 150
GRID = [1, 2, 4, 8, 16, 32, 64]
WIDTHS = {"synthetic": ["inf", 3, 10, 30, 100], "mnist": ["inf", 10, 30, 100, 300],
          "cifar": ["inf", 10, 30, 100, 300]}


def one(args):
    root, ds, lr, w = args
    out = os.path.join(root, ds, f"lr-{lr}", f"width-{w}")
    cfg = TrainConfig(dataset=ds, data_dir=None, train_size=1000, test_size=500, width=w, steps=PROBE_STEPS,
                      lr=float(lr), eval_every=50, eval_size=500, seed=0)
    try:
        train(cfg, out, force=True, log=lambda m: None)
        err = None
    except TrainError as exc:
        err = str(exc)
    path = os.path.join(out, "metrics.csv")
    rows = list(csv.DictReader(open(path))) if os.path.exists(path) else []
    first = float(rows[0]["train_loss"]) if rows else None
    last = float(rows[-1]["train_loss"]) if rows else None
    return dict(dataset=ds, lr=lr, width=w, error=err, first=first, last=last,
                stable=err is None and last is not None and last < first)


if __name__ == "__main__":
    root, datasets = sys.argv[1], sys.argv[2:]
    for ds in datasets:
        results = []
        with ProcessPoolExecutor(2) as ex:
            for r in ex.map(one, [(root, ds, lr, w) for lr in GRID for w in WIDTHS[ds]]):
                print(json.dumps(r), flush=True)
                results.append(r)
        best = None
        for lr in GRID:
            if all(r["stable"] for r in results if r["lr"] == lr):
                best = lr
            else:
                break
        print(json.dumps({"dataset": ds, "largest_stable": best, "chosen": best / 2 if best else None}), flush=True)
