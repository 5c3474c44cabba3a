"""Drift arithmetic shared by ``raymlops monitor`` (Ray Data, any size) and the pipeline's split check.

Work is split into three steps so that it runs the same on one pandas frame and on a Ray Dataset:
:func:`batch_stats` turns one batch into mergeable partial counts, :func:`merge_stats` adds two of
them, and :func:`finalize` compares the totals with the version's reference.

The drift decision is PSI-based with a significance test as supporting evidence. PSI measures how
much a distribution moved (effect size) but is noisy on small samples; Kolmogorov-Smirnov
(numeric) and chi-square (categorical) p-values say whether a move is real, but with 100k rows
they call a shift of a hundredth of a standard deviation "significant". Requiring both flags what
moved by a meaningful amount *and* cannot be explained by sampling noise.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from raymlops.evaluate.reference import bin_counts, category_key, numeric_values

__all__ = [
    "OTHER",
    "Thresholds",
    "batch_stats",
    "decide",
    "finalize",
    "merge_stats",
    "psi",
    "spec_from_reference",
]

OTHER = "__other__"
_EPS = 1e-4
_MAX_DISTINCT = 1000


@dataclass(frozen=True)
class Thresholds:
    """When a feature counts as drifted.

    Attributes:
        psi_drift: PSI at or above which a (significant) change is drift.
        psi_warning: PSI at or above which a change is worth a look.
        pvalue: significance level of the KS / chi-square test that must back a PSI drift.
        ks_effect: a KS statistic at or above this (with a significant p-value) is a warning even
            when PSI is low, e.g. a shift inside one quantile bin.
        null_rate_change: an increase in a feature's null rate (absolute) reported as a problem.
    """

    psi_drift: float = 0.2
    psi_warning: float = 0.1
    pvalue: float = 0.01
    ks_effect: float = 0.1
    null_rate_change: float = 0.05

    def to_dict(self) -> dict[str, float]:
        return {
            "psi_drift": self.psi_drift,
            "psi_warning": self.psi_warning,
            "pvalue": self.pvalue,
            "ks_effect": self.ks_effect,
            "null_rate_change": self.null_rate_change,
        }


def psi(expected: np.ndarray | list[float], actual: np.ndarray | list[float]) -> float:
    """Population stability index between two distributions over the same bins (fractions or counts)."""
    e = np.asarray(expected, dtype="float64")
    a = np.asarray(actual, dtype="float64")
    if e.sum() <= 0 or a.sum() <= 0:
        return 0.0
    e = np.clip(e / e.sum(), _EPS, None)
    a = np.clip(a / a.sum(), _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def decide(psi_value: float | None, pvalue: float | None, statistic: float | None, t: Thresholds) -> str:
    """ "drift", "warning" or "ok" for one feature (see the module docstring for why both are needed)."""
    if psi_value is None:
        return "ok"
    significant = pvalue is None or pvalue < t.pvalue
    if psi_value >= t.psi_drift and significant:
        return "drift"
    if psi_value >= t.psi_warning:
        return "warning"
    if pvalue is not None and pvalue < t.pvalue and statistic is not None and statistic >= t.ks_effect:
        return "warning"
    return "ok"


def spec_from_reference(reference: dict[str, Any]) -> dict[str, Any]:
    """What a batch needs to know about the reference (kept small: it is shipped to every task)."""
    features = {}
    for name, stats in reference["features"].items():
        if stats["type"] == "numeric":
            features[name] = {"type": "numeric", "edges": stats.get("bin_edges", [])}
        else:
            features[name] = {"type": "categorical"}
    pred = reference.get("prediction", {})
    prediction = (
        {"type": "numeric", "edges": pred.get("bin_edges", [])}
        if pred.get("type") == "numeric"
        else {"type": "categorical"}
    )
    return {"features": features, "prediction": prediction}


# ---- per batch --------------------------------------------------------------------------------------


def _value_counts(values: pd.Series) -> dict[str, int]:
    counts = values.map(category_key).value_counts()
    if len(counts) > _MAX_DISTINCT:
        head = counts.iloc[:_MAX_DISTINCT]
        out = {str(k): int(v) for k, v in head.items()}
        out[OTHER] = out.get(OTHER, 0) + int(counts.iloc[_MAX_DISTINCT:].sum())
        return out
    return {str(k): int(v) for k, v in counts.items()}


def _batch_seed(batch: pd.DataFrame, seed: int) -> int:
    head = pd.util.hash_pandas_object(batch.head(3).astype(str), index=False).to_numpy().tobytes()
    return (zlib.crc32(head) + seed + len(batch)) % (2**32)


def batch_stats(
    batch: pd.DataFrame,
    spec: dict[str, Any],
    *,
    sample_fraction: float = 1.0,
    seed: int = 0,
    predictions: pd.Series | np.ndarray | None = None,
    prediction_source: str | None = None,
    unscorable: int = 0,
) -> dict[str, Any]:
    """Mergeable statistics of one batch of rows against the reference's bins.

    Args:
        batch: rows with (some of) the feature columns.
        spec: :func:`spec_from_reference` output.
        sample_fraction: share of rows kept (at random) for the KS tests.
        seed: sampling seed (mixed with the batch contents, so batches draw different rows).
        predictions: one prediction per row (class labels or values), logged or freshly scored.
        prediction_source: "logged" or "scored".
        unscorable: rows that could not be scored.
    """
    n = len(batch)
    out: dict[str, Any] = {
        "rows": n,
        "columns": [str(c) for c in batch.columns],
        "numeric": {},
        "categorical": {},
        "prediction": None,
    }
    sample_cols: dict[str, Any] = {}
    rng = np.random.default_rng(_batch_seed(batch, seed))
    keep = rng.uniform(size=n) < sample_fraction if sample_fraction < 1 else np.ones(n, dtype=bool)
    for name, fspec in spec["features"].items():
        if name not in batch.columns:
            continue
        series = batch[name]
        null = series.isna().to_numpy()
        if fspec["type"] == "numeric":
            values = numeric_values(series)
            finite = np.isfinite(values)
            good = values[finite]
            out["numeric"][name] = {
                "counts": bin_counts(values, fspec["edges"]).tolist(),
                "nulls": int(null.sum()),
                "non_numeric": int((~null & ~finite).sum()),
                "n": int(good.size),
                "sum": float(good.sum()),
                "sumsq": float(np.square(good).sum()),
            }
            sample_cols[name] = values[keep]
        else:
            out["categorical"][name] = {"counts": _value_counts(series[~null]), "nulls": int(null.sum())}
            sample_cols[name] = np.array(
                [None if pd.isna(v) else category_key(v) for v in series.to_numpy(dtype=object)[keep]],
                dtype=object,
            )
    out["sample"] = pd.DataFrame(sample_cols)
    if predictions is not None:
        pspec = spec["prediction"]
        pred = pd.Series(predictions).reset_index(drop=True)
        stats: dict[str, Any] = {"source": prediction_source, "unscorable": int(unscorable)}
        if pspec["type"] == "numeric":
            values = numeric_values(pred)
            stats["counts"] = bin_counts(values, pspec["edges"]).tolist()
            stats["sample"] = values[np.isfinite(values)][
                rng.uniform(size=int(np.isfinite(values).sum())) < sample_fraction
            ]
        else:
            stats["class_counts"] = _value_counts(pred.dropna())
        out["prediction"] = stats
    return out


def merge_stats(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    """The statistics of two batches together."""
    if a is None:
        return b
    out = {
        "rows": a["rows"] + b["rows"],
        "columns": a["columns"]
        if a["columns"] == b["columns"]
        else sorted(set(a["columns"]) | set(b["columns"])),
        "numeric": dict(a["numeric"]),
        "categorical": dict(a["categorical"]),
        "prediction": a["prediction"],
        "sample": pd.concat([a["sample"], b["sample"]], ignore_index=True),
    }
    for name, s in b["numeric"].items():
        if name not in out["numeric"]:
            out["numeric"][name] = s
            continue
        t = out["numeric"][name]
        out["numeric"][name] = {
            "counts": (np.asarray(t["counts"]) + np.asarray(s["counts"])).tolist(),
            **{k: t[k] + s[k] for k in ("nulls", "non_numeric", "n", "sum", "sumsq")},
        }
    for name, s in b["categorical"].items():
        if name not in out["categorical"]:
            out["categorical"][name] = s
            continue
        t = out["categorical"][name]
        counts = dict(t["counts"])
        for k, v in s["counts"].items():
            counts[k] = counts.get(k, 0) + v
        out["categorical"][name] = {"counts": counts, "nulls": t["nulls"] + s["nulls"]}
    pa, pb = a["prediction"], b["prediction"]
    if pa is None or pb is None:
        out["prediction"] = pa or pb
    else:
        merged: dict[str, Any] = {
            "source": pa["source"] or pb["source"],
            "unscorable": pa["unscorable"] + pb["unscorable"],
        }
        if "counts" in pa:
            merged["counts"] = (np.asarray(pa["counts"]) + np.asarray(pb["counts"])).tolist()
            merged["sample"] = np.concatenate([pa["sample"], pb["sample"]])
        else:
            counts = dict(pa["class_counts"])
            for k, v in pb["class_counts"].items():
                counts[k] = counts.get(k, 0) + v
            merged["class_counts"] = counts
        out["prediction"] = merged
    return out


# ---- comparison with the reference ------------------------------------------------------------------


def _ks(reference: np.ndarray | None, current: np.ndarray) -> tuple[float | None, float | None]:
    from scipy import stats

    if reference is None:
        return None, None
    ref = reference[np.isfinite(reference)]
    cur = current[np.isfinite(current)]
    if ref.size < 2 or cur.size < 2:
        return None, None
    res = stats.ks_2samp(ref, cur)
    return float(res.statistic), float(res.pvalue)


def _chi2(ref_fractions: np.ndarray, ref_rows: int, cur_counts: np.ndarray) -> float | None:
    from scipy import stats

    ref_counts = np.asarray(ref_fractions, dtype="float64") * max(ref_rows, 1)
    table = np.vstack([ref_counts, np.asarray(cur_counts, dtype="float64")])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or table[1].sum() == 0:
        return None
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def _round(v: float | None, digits: int = 6) -> float | None:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    return float(round(v, digits)) if abs(v) >= 1e-6 else float(f"{v:.3g}")


def _numeric_feature(
    name: str,
    ref: dict[str, Any],
    cur: dict[str, Any],
    rows: int,
    ref_sample: np.ndarray | None,
    cur_sample: np.ndarray,
    t: Thresholds,
) -> dict[str, Any]:
    counts = np.asarray(cur["counts"])
    value = psi(ref["bin_fractions"], counts) if counts.sum() else None
    stat, pvalue = _ks(ref_sample, cur_sample)
    status = decide(value, pvalue, stat, t)
    null_rate = cur["nulls"] / rows if rows else 0.0
    mean = cur["sum"] / cur["n"] if cur["n"] else None
    std = math.sqrt(max(cur["sumsq"] / cur["n"] - mean**2, 0.0)) if cur["n"] and mean is not None else None
    return {
        "feature": name,
        "type": "numeric",
        "psi": _round(value),
        "ks_statistic": _round(stat),
        "ks_pvalue": _round(pvalue, 8),
        "drift": status == "drift",
        "status": status,
        "null_rate": _round(null_rate),
        "reference_null_rate": _round(ref.get("null_rate", 0.0)),
        "null_rate_change": _round(null_rate - ref.get("null_rate", 0.0)),
        "non_numeric": int(cur["non_numeric"]),
        "mean": _round(mean),
        "reference_mean": _round(ref.get("mean")),
        "std": _round(std),
        "reference_std": _round(ref.get("std")),
        "current_bin_fractions": [float(c / counts.sum()) for c in counts] if counts.sum() else [],
    }


def _categorical_feature(
    name: str, ref: dict[str, Any], cur: dict[str, Any], rows: int, ref_rows: int, t: Thresholds
) -> dict[str, Any]:
    known = list(ref["frequencies"])
    counts = cur["counts"]
    cur_known = np.array([counts.get(k, 0) for k in known], dtype="float64")
    other = float(sum(v for k, v in counts.items() if k not in ref["frequencies"]))
    ref_frac = np.array([*ref["frequencies"].values(), ref.get("other_fraction", 0.0)])
    cur_counts = np.append(cur_known, other)
    value = psi(ref_frac, cur_counts) if cur_counts.sum() else None
    pvalue = _chi2(ref_frac, ref_rows, cur_counts)
    status = decide(value, pvalue, None, t)
    total = max(cur_counts.sum(), 1.0)
    unseen = sorted((k for k in counts if k not in ref["frequencies"]), key=lambda k: -counts[k])
    null_rate = cur["nulls"] / rows if rows else 0.0
    return {
        "feature": name,
        "type": "categorical",
        "psi": _round(value),
        "ks_statistic": None,
        "ks_pvalue": None,
        "chi2_pvalue": _round(pvalue, 8),
        "drift": status == "drift",
        "status": status,
        "null_rate": _round(null_rate),
        "reference_null_rate": _round(ref.get("null_rate", 0.0)),
        "null_rate_change": _round(null_rate - ref.get("null_rate", 0.0)),
        "unseen_categories": unseen[:20] if ref.get("other_fraction", 0.0) == 0 else [],
        "unseen_rate": _round(other / total) if ref.get("other_fraction", 0.0) == 0 else None,
        "current_frequencies": {k: float(counts.get(k, 0) / total) for k in known},
    }


def _prediction(ref: dict[str, Any], cur: dict[str, Any] | None, t: Thresholds) -> dict[str, Any] | None:
    if cur is None or not ref:
        return None
    if "counts" in cur:
        counts = np.asarray(cur["counts"])
        value = psi(ref["bin_fractions"], counts) if counts.sum() else None
        ref_sample = np.asarray(ref.get("sample") or [], dtype="float64")
        stat, pvalue = _ks(
            ref_sample if ref_sample.size else None, np.asarray(cur["sample"], dtype="float64")
        )
        status = decide(value, pvalue, stat, t)
        rows = int(counts.sum())
        detail: dict[str, Any] = {"ks_statistic": _round(stat), "ks_pvalue": _round(pvalue, 8)}
    else:
        labels = list(ref["frequencies"])
        counts_d = cur["class_counts"]
        cur_counts = np.array(
            [counts_d.get(k, 0) for k in labels]
            + [sum(v for k, v in counts_d.items() if k not in ref["frequencies"])],
            dtype="float64",
        )
        ref_frac = np.array([*ref["frequencies"].values(), 0.0])
        value = psi(ref_frac, cur_counts) if cur_counts.sum() else None
        pvalue = _chi2(ref_frac, int(ref.get("rows", 0)), cur_counts)
        status = decide(value, pvalue, None, t)
        rows = int(cur_counts.sum())
        total = max(cur_counts.sum(), 1.0)
        detail = {
            "chi2_pvalue": _round(pvalue, 8),
            "frequencies": {k: float(counts_d.get(k, 0) / total) for k in labels},
            "reference_frequencies": ref["frequencies"],
        }
    return {
        "source": cur["source"],
        "rows": rows,
        "unscorable": cur["unscorable"],
        "psi": _round(value),
        "drift": status == "drift",
        "status": status,
        **detail,
    }


def finalize(
    stats: dict[str, Any],
    reference: dict[str, Any],
    reference_sample: pd.DataFrame | None,
    thresholds: Thresholds,
) -> dict[str, Any]:
    """Compare merged batch statistics with the reference: per-feature drift, schema skew, quality."""
    rows = int(stats["rows"])
    features = reference["features"]
    present = set(stats["columns"])
    missing = [f for f in features if f not in present]
    extra = sorted(present - set(features))
    sample: pd.DataFrame = stats.get("sample", pd.DataFrame())
    out_features: list[dict[str, Any]] = []
    for name, ref in features.items():
        if name in missing:
            continue
        if ref["type"] == "numeric" and name in stats["numeric"]:
            ref_values = (
                np.asarray(reference_sample[name], dtype="float64")
                if reference_sample is not None and name in reference_sample
                else None
            )
            cur_values = np.asarray(sample[name], dtype="float64") if name in sample else np.zeros(0)
            out_features.append(
                _numeric_feature(name, ref, stats["numeric"][name], rows, ref_values, cur_values, thresholds)
            )
        elif ref["type"] == "categorical" and name in stats["categorical"]:
            out_features.append(
                _categorical_feature(
                    name, ref, stats["categorical"][name], rows, int(reference.get("rows", 0)), thresholds
                )
            )
    type_mismatch = [
        {"feature": f["feature"], "non_numeric": f["non_numeric"], "rate": _round(f["non_numeric"] / rows)}
        for f in out_features
        if f.get("non_numeric")
    ]
    unseen = {f["feature"]: f["unseen_categories"] for f in out_features if f.get("unseen_categories")}
    null_changes = [
        {
            "feature": f["feature"],
            "null_rate": f["null_rate"],
            "reference_null_rate": f["reference_null_rate"],
        }
        for f in out_features
        if (f["null_rate_change"] or 0.0) >= thresholds.null_rate_change
    ]
    prediction = _prediction(reference.get("prediction", {}), stats.get("prediction"), thresholds)
    drifted = [f["feature"] for f in out_features if f["drift"]]
    return {
        "rows": rows,
        "sampled_rows": int(len(sample)),
        "features": out_features,
        "drifted_features": drifted,
        "warning_features": [f["feature"] for f in out_features if f["status"] == "warning"],
        "schema": {
            "missing_features": missing,
            "extra_columns": extra,
            "type_mismatch": type_mismatch,
            "unseen_categories": unseen,
            "skew": bool(missing or type_mismatch),
        },
        "data_quality": {"null_rate_increases": null_changes},
        "prediction": prediction,
        "drift": bool(drifted) or bool(prediction and prediction["drift"]),
        "thresholds": thresholds.to_dict(),
    }
