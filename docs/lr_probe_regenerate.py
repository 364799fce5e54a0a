"""Regenerate the per-width learning-rate probes of REPRODUCTION Part 5 whose lr_probe.json was not kept
(mnist-D, mnist-ae-D, mi2-32-C0.3D), from the options of docs/controls_runs_1000.sh, and gp-D as a control
(its original file is kept: the regenerated one must make the same decisions).  From the repository root:

    python docs/lr_probe_regenerate.py OUT_DIR [NAME ...]        # MNIST files from $BOTTLENECK_DATA

The probe is deterministic (MATH §7.5): seed 0, the sweep's data and options, the Numba backend as in the
sweeps, and the evaluation rows drawn from the seed as every Part 5 run did (eval_subset "seed").  Writes
OUT_DIR/NAME/lr_probe.json.
"""
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.getcwd())

from experiments.lr_probe import PROBE_FILE, per_width_rates  # noqa: E402
from experiments.train import TrainConfig  # noqa: E402

PW = dict(lr_policy="per-width", lr_fraction=0.5, lr_probe_steps=50)
COMMON = dict(backend="cpu", steps=1000, eval_every=50, eval_size=500, seed=0, eval_subset="seed", lr_scale="none")
SYN2K = dict(train_size=2000, test_size=2000)
SWEEPS = {
    "gp-D": (dict(dataset="synthetic", d0=16, **SYN2K), ["inf", 50, 100, 200, 500]),
    "mi2-32-C0.3D": (dict(dataset="multi-index", d0=32, latent_dim=2, out_std=0.3, **SYN2K),
                     ["inf", 2, 10, 50, 100, 200, 500]),
    "mnist-D": (dict(dataset="mnist", train_size=2000, test_size=1000), ["inf", 50, 100, 200, 500]),
    "mnist-ae-D": (dict(dataset="mnist", train_size=1000, test_size=500, task="autoencoder"),
                   ["inf", 8, 32, 128, 500]),
}


def main(out, names):
    for name in names or list(SWEEPS):
        opts, widths = SWEEPS[name]
        cfg = TrainConfig(width=widths[0], **COMMON, **PW, **opts)
        cfg.validate()
        target = os.path.join(out, name)
        rates = per_width_rates(target, cfg, widths, log=lambda m: print(f"{name}: {m}", flush=True))
        path = os.path.join(target, PROBE_FILE)
        record = json.load(open(path))
        record["regenerated"] = ("by docs/lr_probe_regenerate.py after the sweep (the original file was not kept); "
                                 "options from docs/controls_runs_1000.sh")
        with open(path, "w") as fh:
            json.dump(record, fh, indent=2)
            fh.write("\n")
        print(name, json.dumps(rates), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
