"""Collect every subject × encoder into ``encoding.tsv``."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from brainatt.contracts.encoding import VOXEL_SCORES, read_voxel_scores
from brainatt.encoding.evaluate import summarize
from brainatt.io import atomic_path

log = logging.getLogger(__name__)


def write_tsv(table: pd.DataFrame, out: str | Path) -> None:
    """A table as every ``results/tables/*.tsv`` is written: atomically, 4 decimals."""
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")


def write_encoding_summary(
    encoding_dir: str | Path,
    subjects: list[str],
    encoders: list[str],
    table: str | Path,
) -> pd.DataFrame:
    """Per-ROI scores of every subject × encoder → ``table``."""
    encoding_dir = Path(encoding_dir)
    parts = []
    for subject in subjects:
        for encoder in encoders:
            folder = encoding_dir / subject / encoder
            scores = read_voxel_scores(folder / VOXEL_SCORES)
            parts.append(summarize(scores, subject, encoder))
    result = pd.concat(parts, ignore_index=True)
    write_tsv(result, table)
    families = result[result["roi"].str.startswith("family:")]
    log.info("NC-normalised accuracy by family:\n%s", families.pivot_table("nc_norm", "encoder", "roi").round(3))
    return result
