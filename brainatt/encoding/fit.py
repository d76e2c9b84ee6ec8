"""Fit one encoder for one subject from the feature cache and write its folder (``results/encoding/{s}/{enc}/``).

The encoders and their protocol are in `brainatt.encoding.encoders`. Outputs: ``model.safetensors`` +
``model.json`` (`Encoder.save`), ``test_pred.h5``, ``voxel_scores.tsv`` and, for the transformer,
``attention.h5`` (test-image attention maps per query, ensemble mean; heads weighted in each image by their
mean-ablation importance, the validation images giving the ablation's mean, and the reference's plain head mean
beside them).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from brainatt.contracts.encoding import (
    ATTENTION,
    TEST_PRED,
    VOXEL_SCORES,
    write_attention,
    write_test_predictions,
    write_voxel_scores,
)
from brainatt.contracts.features import FeatureCache
from brainatt.contracts.ground_truth import read_true_responses
from brainatt.encoding.data import load_subject
from brainatt.encoding.encoders import EncodingConfig, TransformerEncoder, encoder_class
from brainatt.encoding.evaluate import NC_MIN, voxel_scores
from brainatt.io import atomic_path

log = logging.getLogger(__name__)


def _write_attention(
    path: Path, encoder: TransformerEncoder, cache: FeatureCache, nsd_ids: np.ndarray, config: dict
) -> None:
    """Ensemble-mean test maps (as the reference, a plain mean over members), both head weightings, and the query
    each voxel reads."""
    members = encoder.attention_maps(cache, nsd_ids)

    def ensemble(key: str) -> np.ndarray:
        return torch.stack([m[key] for m in members]).mean(0).permute(1, 0, 2, 3).numpy().astype(np.float16)

    importance = torch.stack([m["importance"] for m in members]).numpy()
    maps, head_mean = ensemble("weighted"), ensemble("head_mean")
    queries, voxel_query, grid = encoder.queries_, encoder.voxel_query_, cache.grid
    write_attention(path, config, queries, voxel_query, nsd_ids, maps, head_mean, importance, grid)


def fit_encoder(
    responses: str | Path,
    features: str | Path,
    encoder: str,
    cfg: EncodingConfig,
    out: str | Path,
    truth: str | Path | None = None,
    device: str | None = None,
) -> Path:
    """Fit the registered ``encoder`` for the subject of ``responses`` on the feature cache ``features``, predict
    the test images from the cache, and write its folder ``out`` atomically.

    Torch encoders checkpoint every epoch into ``{out}.ckpt/`` beside the folder (outside it: Snakemake clears a
    job's outputs before rerunning it), resume from there when rerun, and remove it once ``out`` is complete."""
    cls = encoder_class(encoder)
    t0 = time.time()
    sub = load_subject(responses)
    cache = FeatureCache(features)
    out = Path(out)
    checkpoints = out.parent / f"{out.name}.ckpt"
    model = cls(cfg).fit(sub, cache, device, checkpoints)
    pred = model.predict(cache, sub.test_ids)
    true = read_true_responses(truth, sub.ijk, sub.test_ids, sub.path) if truth else None
    scores = voxel_scores(sub, pred, true)
    config = {"encoder": encoder, "encoding": dataclasses.asdict(cfg), "features": cache.backbone}
    with atomic_path(out, directory=True) as tmp:
        model.save(tmp)
        write_test_predictions(tmp / TEST_PRED, sub.test_ids, pred, config)
        if isinstance(model, TransformerEncoder):
            _write_attention(tmp / ATTENTION, model, cache, sub.test_ids, config)
        write_voxel_scores(tmp / VOXEL_SCORES, scores)
    shutil.rmtree(checkpoints, ignore_errors=True)
    ok = scores["nc"] >= NC_MIN
    log.info(
        "%s %s: mean r %.3f, NC-normalised %.3f (%d voxels with NC ≥ 5%%) in %.0f s",
        sub.path.parent.name,
        encoder,
        scores["r"].mean(),
        scores.loc[ok, "nc_norm"].mean(),
        ok.sum(),
        time.time() - t0,
    )
    return out
