"""Collect every subject × encoder into ``encoding.tsv`` (and, on nsd-synth, routing-vs-truth ``routing.tsv``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from brainatt.contracts.encoding import ATTENTION, VOXEL_SCORES, read_voxel_scores
from brainatt.encoding.evaluate import summarize
from brainatt.encoding.routing import routing_scores
from brainatt.io import BrainattError, atomic_path

log = logging.getLogger(__name__)


def _write_tsv(table: pd.DataFrame, out: str | Path) -> None:
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")


def write_encoding_summary(
    encoding_dir: str | Path,
    subjects: list[str],
    encoders: list[str],
    table: str | Path,
    routing: str | Path | None = None,
    ground_truth: str | Path | None = None,
) -> pd.DataFrame:
    """Per-ROI scores of every subject × encoder → ``table``; transformer routing vs truth → ``routing``."""
    encoding_dir = Path(encoding_dir)
    parts, routes = [], []
    for subject in subjects:
        for encoder in encoders:
            folder = encoding_dir / subject / encoder
            scores = read_voxel_scores(folder / VOXEL_SCORES)
            parts.append(summarize(scores, subject, encoder))
            attention = folder / ATTENTION
            if routing and ground_truth and attention.exists():
                routes.append(routing_scores(attention, scores, ground_truth, subject))
    result = pd.concat(parts, ignore_index=True)
    _write_tsv(result, table)
    if routing:
        if not routes:
            raise BrainattError(f"{routing}: routing needs nsd-synth ground truth and a transformer's attention.h5")
        _write_tsv(pd.concat(routes, ignore_index=True), routing)
    families = result[result["roi"].str.startswith("family:")]
    log.info("NC-normalised accuracy by family:\n%s", families.pivot_table("nc_norm", "encoder", "roi").round(3))
    return result
