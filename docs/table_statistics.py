"""The descriptive statistic and the "inconclusive" label for the committed sweeps of REPRODUCTION Parts 4 and 5,
from their tables.md (the per-step per-seed curves of those runs were not committed).  From the repository root:

    python docs/table_statistics.py docs/figures/controls docs/figures/controls5 > OUT.md

For each sweep: the old rule's verdict as its tables.md states it (unchanged), "inconclusive" when at the last
tabled step every width's mean training loss is above 0.9 L_null (experiments.plots.INCONCLUSIVE_LEVEL), and
experiments.plots.first_step_all_below on the steps the tables hold (5 %, 12.5 %, 1/6, 25 %, 50 % and 100 % of
the horizon: every seed of every finite width below every seed of inf from that step on, at those steps; the
statistic on all evaluated steps can only be later or "never" where the tables say a step).
"""
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))

from experiments.plots import INCONCLUSIVE_LEVEL, first_step_all_below, parse_table_ranges  # noqa: E402


def row(path):
    text = path.read_text()
    ranges = parse_table_ranges(text)
    null = re.search(r"L_null = ([0-9.eE+-]+)", text)
    loss_null = float(null.group(1)) if null else None
    verdict = re.search(r"\*\*(confirmed|not confirmed|mixed)\*\*", text)
    horizon = max(max(c) for c in ranges.values())
    means = {w: c[horizon][0] for w, c in ranges.items() if horizon in c}
    inconclusive = loss_null is not None and all(m > INCONCLUSIVE_LEVEL * loss_null for m in means.values())
    stat = first_step_all_below(ranges)
    if stat is None:
        first = "n/a"
    elif stat["step"] is None:
        first = "never"
    else:
        first = f"{stat['step']}: {stat['ordering_at_step']}"
    steps = ", ".join(str(s) for s in stat["steps"]) if stat else ""
    return (f"| `{path.parent.name}` | {verdict.group(1) if verdict else 'n/a'} | "
            f"{'**inconclusive**' if inconclusive else 'learned'} | {first} | "
            f"{stat['ordering_at_horizon'] if stat else ''} | {steps} |")


def main(folders):
    print("| sweep | old rule (unchanged) | label | first step all below inf: order there | order at the horizon "
          "(mean) | steps in the table |")
    print("|---|---|---|---|---|---|")
    for folder in folders:
        for path in sorted(Path(folder).glob("*/tables.md")):
            print(row(path))


if __name__ == "__main__":
    main(sys.argv[1:])
