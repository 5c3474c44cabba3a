"""Deterministic splits without a global shuffle: a row's part follows from its hash alone.

Every row has a 64-bit hash (of the split key column, or of its whole content; see
:mod:`raymlops.data.profile`). Its top 12 bits are its bucket. The profiling pass counts rows per
bucket and class; from those counts the driver picks, per class, the buckets that go to the test
part and to the validation part so that each class is split in the asked proportions
(stratification). Assigning a row then needs only its hash and its class, so any task anywhere
assigns it the same way: the same data gives the same split whatever the block layout, the
number of workers or the cluster size, and nothing is shuffled or collected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from raymlops.config import SplitConfig
from raymlops.data.profile import BUCKETS, ProfileSpec, SourceProfile, row_hashes
from raymlops.data.schema import TableSchema

__all__ = ["TEST", "TRAIN", "VALIDATION", "SplitPlan", "split_frame"]

TRAIN, VALIDATION, TEST = 0, 1, 2
_PARTS = {"train": TRAIN, "validation": VALIDATION, "test": TEST}


def _mix(seed: int) -> np.uint64:
    """A per-seed offset added to bucket numbers, so another seed picks other buckets."""
    x = (seed * 0x9E3779B97F4A7C15 + 0xBF58476D1CE4E5B9) % 2**64
    return np.uint64(x % BUCKETS)


def _cuts(counts: np.ndarray, test_size: float, val_size: float) -> tuple[int, int]:
    """Bucket positions where the test part and then the validation part end, for one class."""
    total = int(counts.sum())
    cum = np.cumsum(counts)
    want_test = test_size * total
    want_val = want_test + val_size * (total - want_test)
    # the first position whose cumulative count reaches the wanted size (ties: nearest)
    t = int(np.searchsorted(cum, want_test - 0.5, side="left")) + 1 if total else 0
    v = int(np.searchsorted(cum, want_val - 0.5, side="left")) + 1 if total else 0
    return min(t, BUCKETS), min(max(v, t), BUCKETS)


@dataclass
class SplitPlan:
    """Per class, the bucket cut points of the test and validation parts.

    Attributes:
        seed: rotates the bucket order.
        cuts: class -> (test end, validation end) in rotated bucket order; key None: all rows.
        sizes: part -> class -> rows (what the summary reports).
    """

    seed: int
    cuts: dict[Any, tuple[int, int]]
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def from_profile(cls, profile: SourceProfile, schema: TableSchema, cfg: SplitConfig) -> SplitPlan:
        stratify = cfg.stratify and schema.task == "classification" and profile.class_buckets is not None
        offset = int(_mix(cfg.seed))
        histograms: dict[Any, np.ndarray] = (
            dict(profile.class_buckets or {}) if stratify else {None: profile.buckets}
        )
        cuts: dict[Any, tuple[int, int]] = {}
        sizes: dict[str, dict[str, int]] = {"train": {}, "validation": {}, "test": {}}
        for value, counts in histograms.items():
            rotated = np.roll(counts, -offset)
            t, v = _cuts(rotated, cfg.test_size, cfg.validation_size)
            cuts[value] = (t, v)
            label = "all" if value is None else str(value)
            sizes["test"][label] = int(rotated[:t].sum())
            sizes["validation"][label] = int(rotated[t:v].sum())
            sizes["train"][label] = int(rotated[v:].sum())
        return cls(seed=cfg.seed, cuts=cuts, sizes=sizes)

    def total(self, part: str) -> int:
        return sum(self.sizes.get(part, {}).values())

    def assign(self, hashes: np.ndarray, target: Any) -> np.ndarray:
        """The part (TRAIN, VALIDATION, TEST) of each row, from its hash and class."""
        buckets = (hashes >> np.uint64(52)).astype(np.int64)
        position = (buckets - int(_mix(self.seed))) % BUCKETS
        out = np.full(len(hashes), TRAIN, dtype=np.int8)
        if None in self.cuts:
            groups: list[tuple[np.ndarray | slice, tuple[int, int]]] = [(slice(None), self.cuts[None])]
        else:
            labels = pd.Series(np.asarray(target, dtype=object)).map(_key).to_numpy(dtype=object)
            groups = [(labels == _key(value), cut) for value, cut in self.cuts.items()]
        for rows, (t, v) in groups:
            pos = position[rows]
            out[rows] = np.where(pos < t, TEST, np.where(pos < v, VALIDATION, TRAIN))
        return out


def _key(value: Any) -> Any:
    """Class values compare as the profile saw them (numpy scalars as Python values)."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, (str, bytes)) else value


def part_code(name: str) -> int:
    return _PARTS[name]


def split_frame(
    frame: pd.DataFrame, schema: TableSchema, cfg: SplitConfig
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train, validation and test parts of an in-memory frame, exactly as a source would be split."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    spec = ProfileSpec(target=schema.target, key=cfg.key)
    plan = SplitPlan.from_profile(SourceProfile.of_table(table, spec), schema, cfg)
    parts = plan.assign(row_hashes(table, spec), frame[schema.target].to_numpy())
    return frame[parts == TRAIN], frame[parts == VALIDATION], frame[parts == TEST]
