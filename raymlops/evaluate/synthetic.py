"""Small generated tables for the governance demos and tests: biased labels and shiftable features.

The fairness demo needs a label that depends on a sensitive group, and the drift checks need a
table whose distribution can be shifted feature by feature; both come from one generator so a
model trained on :func:`credit_frame` can be monitored on :func:`credit_frame` with ``shift``.

Run ``python -m raymlops.evaluate.synthetic --output pipelines/data/fairness_demo.csv`` to write
the file ``pipelines/fairness_demo.yaml`` reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["NUMERIC_FEATURES", "credit_frame", "write_frame"]

NUMERIC_FEATURES = ("income", "debt_ratio", "tenure", "utilization", "age")
_REGIONS = ("north", "south", "east", "west")


def credit_frame(
    rows: int = 4000,
    *,
    seed: int = 0,
    group_effect: float = 1.6,
    shift: dict[str, float] | None = None,
    with_target: bool = True,
) -> pd.DataFrame:
    """A loan-approval table whose label depends on the sensitive column ``group``.

    Args:
        rows: number of rows.
        seed: random seed; a different seed is a fresh sample of the same distribution.
        group_effect: how much belonging to group ``B`` raises the approval log-odds (0: no bias).
        shift: ``{feature: amount}`` added to numeric features after the label is drawn, in units
            of that feature's standard deviation, so the label still follows the original
            relationship (covariate shift, what monitoring must notice).
        with_target: include the ``approved`` label column.
    """
    rng = np.random.default_rng(seed)
    group = rng.choice(np.array(["A", "B"]), size=rows, p=[0.55, 0.45])
    region = rng.choice(np.array(_REGIONS), size=rows, p=[0.4, 0.3, 0.2, 0.1])
    income = rng.lognormal(mean=10.5, sigma=0.4, size=rows)
    debt_ratio = rng.beta(2.0, 5.0, size=rows)
    tenure = rng.gamma(2.0, 3.0, size=rows)
    utilization = rng.uniform(0.0, 1.0, size=rows)
    age = rng.normal(42.0, 12.0, size=rows).clip(18, 90)
    logit = (
        1.3 * (np.log(income) - 10.5) / 0.4
        - 1.1 * (debt_ratio - 0.285) / 0.16
        + 0.5 * (tenure - 6.0) / 4.2
        - 0.4 * (utilization - 0.5) / 0.29
        + 0.3 * (region == "north")
        + group_effect * (group == "B")
        - 0.6
    )
    approved = (rng.uniform(size=rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    frame = pd.DataFrame(
        {
            "income": income,
            "debt_ratio": debt_ratio,
            "tenure": tenure,
            "utilization": utilization,
            "age": age,
            "region": region,
            "group": group,
        }
    )
    for feature, amount in (shift or {}).items():
        if feature not in NUMERIC_FEATURES:
            raise ValueError(f"can only shift numeric features {NUMERIC_FEATURES}, not {feature!r}")
        frame[feature] = frame[feature] + amount * float(frame[feature].std())
    if with_target:
        frame["approved"] = approved
    return frame


def write_frame(frame: pd.DataFrame, output: str | Path) -> Path:
    """Write a frame as CSV or Parquet depending on the file name."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".parquet", ".pq"):
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def _main() -> None:
    parser = argparse.ArgumentParser(description="Write the fairness/drift demo table.")
    parser.add_argument("--output", required=True, help="a .csv or .parquet path")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--group-effect", type=float, default=1.6)
    parser.add_argument(
        "--shift",
        action="append",
        default=[],
        metavar="FEATURE=STD",
        help="shift a numeric feature by this many standard deviations (repeatable)",
    )
    args = parser.parse_args()
    shift = {k: float(v) for k, v in (s.split("=", 1) for s in args.shift)}
    frame = credit_frame(args.rows, seed=args.seed, group_effect=args.group_effect, shift=shift)
    print(write_frame(frame, args.output))


if __name__ == "__main__":
    _main()
