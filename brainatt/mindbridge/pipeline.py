"""One regime's run, from files to files: the trained model, its test scores and its test predictions.

Output folder (written atomically): ``model.safetensors`` + ``model.json``, ``scores.tsv`` (one row per subject
scored: subject, regime, n_images, the `evaluate.score` columns), ``history.json`` (per-epoch losses) and
``pred_{subject}.npz`` (``nsd_ids``, ``image``, ``text`` predicted for the test images). A checkpoint beside the
folder (``{out}.ckpt``) lets an interrupted run resume; it is removed when the folder is complete.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainatt.io import BrainattError, atomic_path
from brainatt.mindbridge.data import load_subject, load_targets
from brainatt.mindbridge.evaluate import evaluate_subject
from brainatt.mindbridge.model import MindBridgeConfig
from brainatt.mindbridge.train import TrainConfig, load_model, save_model, train_regime
from brainatt.models.loading import default_device

log = logging.getLogger(__name__)


def run_regime(
    regime: str,
    responses: dict[str, str | Path],
    image_features: str | Path,
    text_features: str | Path,
    out: str | Path,
    config: dict[str, Any],
    target: str | None = None,
    percent: float | None = None,
    init: str | Path | None = None,
) -> pd.DataFrame:
    """Train one regime and write its output folder; ``responses`` maps each subject to its ``responses.h5``.

    ``single`` with ``percent`` is the from-scratch baseline on the first ``percent`` % of the subject's training
    images (in the order shown); ``reset``/``finetune`` adapt the model in ``init`` to ``target`` (limited the same
    way) and score the target only.
    """
    t0 = time.time()
    out = Path(out)
    model_cfg = MindBridgeConfig.from_config(config.get("model", {}))
    train_cfg = TrainConfig.from_config(config.get("train", {}))
    data = {s: load_subject(p, s) for s, p in responses.items()}
    limited = target if regime in ("reset", "finetune") else (next(iter(data)) if percent else None)
    if limited is not None:
        if limited not in data:
            raise BrainattError(f"--target {limited} has no --responses entry (given: {sorted(data)})")
        if percent:
            n_images = max(1, round(percent / 100 * len(data[limited].train_images())))
            data[limited] = data[limited].limit(n_images)
    ids = np.concatenate([np.concatenate([d.trial_ids, d.test_ids]) for d in data.values()])
    targets = load_targets(image_features, text_features, ids, bool(config.get("image_tokens", False)))
    start = load_model(init) if init else None
    checkpoint = out.parent / f"{out.name}.ckpt"
    device = default_device()
    model, history = train_regime(regime, data, targets, model_cfg, train_cfg, target, start, checkpoint, device)
    model.cpu()
    scored = [limited] if limited is not None else list(data)
    label = "scratch" if regime == "single" and percent else regime
    rows = []
    with atomic_path(out, directory=True) as tmp:
        for s in scored:
            scores, pred = evaluate_subject(model, data[s], targets)
            rows.append({"subject": s, "regime": label, "n_images": len(data[s].train_images()), **scores})
            np.savez(tmp / f"pred_{s}.npz", **pred)
            log.info("%s %s: image retrieval %.3f", label, s, scores["image_retrieval"])
        table = pd.DataFrame(rows)
        table.to_csv(tmp / "scores.tsv", sep="\t", index=False)
        (tmp / "history.json").write_text(json.dumps(history))
        save_model(model, tmp, {"regime": regime, "target": target, "seconds": time.time() - t0})
    checkpoint.unlink(missing_ok=True)
    log.info("%s done in %.1f s → %s", regime, time.time() - t0, out)
    return table
