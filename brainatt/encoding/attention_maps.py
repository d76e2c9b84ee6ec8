"""A transformer's ``attention.h5`` read per ROI × hemisphere, whatever its query mode.

With ROI queries a ROI's map is its query's map. With per-voxel or hemisphere queries it is the mean over the
ROI's voxels of the map of the query each voxel reads (``voxel_query`` in the file). The maps' heads are weighted
by their importance to each *query's* voxels, so under shared (hemisphere) queries a ROI's weighted map is its
query's, not re-weighted for that ROI; ``maps_head_mean`` has no such weighting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from brainatt.encoding.data import roi_labels
from brainatt.io import BrainattError

if TYPE_CHECKING:
    import h5py

CHUNK = 16  # queries summed at a time: per-voxel maps of a whole ROI could take gigabytes in float64


def voxel_labels(voxel_scores: pd.DataFrame) -> np.ndarray:
    """Each voxel's ROI label (`data.roi_labels`), voxels 0 … V−1 in order, from an encoder's voxel scores."""
    scores = voxel_scores.sort_values("voxel")
    if not np.array_equal(scores["voxel"].to_numpy(), np.arange(len(scores))):
        raise BrainattError(
            "the voxel scores must list every voxel 0 … V−1 once (voxel_scores.tsv as the encode rule writes it)"
        )
    return roi_labels(scores["hemi"], scores["roi"])


def roi_voxels(labels: np.ndarray) -> dict[str, np.ndarray]:
    """ROI label → the indices of its voxels, labels sorted (with ROI queries: the order of the query names)."""
    return {str(label): np.flatnonzero(labels == label) for label in np.unique(labels)}


def voxel_queries(attention: h5py.File, labels: np.ndarray) -> np.ndarray:
    """Each voxel's row in an open ``attention.h5``'s maps, for voxels with ROI ``labels`` (`voxel_labels`).

    The file's ``voxel_query`` (the fitted model's voxel → query index, any query mode); in files written before
    it, the query named like the voxel (``lh.V1v#17``) or its ROI (``lh.V1v``); -1 where there is none.
    """
    n_queries = len(attention["queries"])
    if "voxel_query" in attention:
        index = attention["voxel_query"][()].astype(np.int64)
        if len(index) != len(labels) or index.max(initial=0) >= n_queries:
            raise BrainattError(
                f"{attention.filename}: maps of {len(index)} voxels and {n_queries} queries for {len(labels)} scored "
                "voxels: the attention file is another subject's or stale; rerun the transformer encoder"
            )
        return index
    names = {name: q for q, name in enumerate(attention["queries"][()].astype(str))}
    return np.array([names.get(f"{label}#{v}", names.get(label, -1)) for v, label in enumerate(labels)], np.int64)


def roi_attention(
    maps: h5py.Dataset | np.ndarray, voxel_query: np.ndarray, voxels: np.ndarray, dtype: type = np.float64
) -> np.ndarray | None:
    """``(N, gh, gw)`` in ``dtype``: what ``voxels`` attend to, the mean over them of the map of the query each reads.

    ``maps`` is ``attention.h5``'s ``(query, image, gh, gw)``. With ROI queries that is their query's own map, as
    stored; with per-voxel queries the mean of the voxels' maps (summed in float64, ``CHUNK`` queries at a time);
    ``None`` when none of them reads a query.
    """
    queries, counts = np.unique(voxel_query[voxels], return_counts=True)
    counts, queries = counts[queries >= 0], queries[queries >= 0]
    if not len(queries):
        return None
    if len(queries) == 1:
        return maps[int(queries[0])].astype(dtype)
    total = 0.0
    for i in range(0, len(queries), CHUNK):
        block = queries[i : i + CHUNK]
        total = total + np.tensordot(counts[i : i + CHUNK], maps[block].astype(np.float64), axes=1)
    return (total / counts.sum()).astype(dtype)
