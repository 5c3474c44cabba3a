"""Batch scoring with Ray Data: streaming, actor pools, quarantine, reconciliation, resume.

``score(ref, input, output)`` reads CSV or Parquet from any pyarrow filesystem in fixed units of
work, scores each unit in a pool of actors that load the model once (verified against its sha256),
and writes one Parquet shard per unit with the kept input columns, the prediction and the class
probabilities. Rows that fail the model's schema go to ``<output>/_rejected/`` with a reason, and
the job only reports success once the files on disk show rows in = rows scored + rows rejected.
Each unit's files appear exactly once, by rename, so ``resume=True`` finishes a killed job without
duplicating or losing a row.
"""

from ._output import (
    JOB_FILE,
    MANIFEST_FILE,
    SUCCESS_FILE,
    OutputLocation,
    Reconciliation,
    UnitResult,
    reconcile,
)
from ._plan import JobPlan, ScoreUnit
from ._runner import DEFAULT_BATCH_ROWS, DEFAULT_UNIT_ROWS, ScoreError, ScoreFailed, pool_size, score
from ._worker import REASON, ROW, SOURCE

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_UNIT_ROWS",
    "JOB_FILE",
    "MANIFEST_FILE",
    "REASON",
    "ROW",
    "SOURCE",
    "SUCCESS_FILE",
    "JobPlan",
    "OutputLocation",
    "Reconciliation",
    "ScoreError",
    "ScoreFailed",
    "ScoreUnit",
    "UnitResult",
    "pool_size",
    "reconcile",
    "score",
]
