"""Training loop for the torch encoders (transformer, factorized) and per-voxel ensembling.

Defaults follow the reference code (research digest §2.5): MSE, AdamW (weight decay 1e-4), gradient clipping at
global norm 0.1, step schedule ×0.5 every ``lr_drop`` epochs, batch 32; plus early stopping on a fixed-seed
validation split carved from the training images (never the test set), keeping the best epoch's weights. The
learning rate is 2e-3 rather than the reference 5e-4: with ~1,000 training images (nsd-synth, 2 CPU cores) 5e-4
had not converged after 15 epochs (subj01 val r 0.44 vs 0.48 at 2e-3). The rate halves every 16 epochs, with
patience 8 and at most 48 epochs: of the four schedules compared on the validation split this one gave the best
mean validation r (+0.004-0.008 on retinotopic voxels against halving every 8 of at most 24 epochs, which stopped
every model at the cap, still improving).

Optional attention-entropy prior (``attention_entropy``, transformer only): from ``entropy_start`` the loss adds
the weight times the mean entropy of the content-ROI queries' head-averaged maps, and early stopping selects only
from that epoch on. MSE alone leaves the maps under-determined (docs/encoding.md); the prior picks sharper ones.

With a ``checkpoint`` path the whole training state (weights, optimiser, schedule, both random generators, the best
epoch so far, the history) is written there atomically after every epoch under a ``key`` naming the settings and
the data; a rerun with the same key resumes after the last saved epoch and ends exactly as an uninterrupted run.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainatt.encoding.transformer import attention_entropy
from brainatt.io import BrainattError, atomic_path
from brainatt.metrics import pearson_r

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 48
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    clip: float = 0.1
    lr_drop: int = 16
    patience: int = 8
    attention_entropy: float = 0.0
    entropy_start: int = 16
    seed: int = 0


@torch.no_grad()
def predict(model: nn.Module, tokens: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Predictions ``(N, V)`` in eval mode, batched."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(tokens[i : i + batch].to(device)).cpu() for i in range(0, len(tokens), batch)]).numpy()


def fit(
    model: nn.Module,
    x_fit: torch.Tensor,
    y_fit: torch.Tensor,
    x_val: torch.Tensor,
    y_val: np.ndarray,
    cfg: TrainConfig,
    desc: str = "",
    stage: bool = True,
    checkpoint: Path | None = None,
    key: str = "",
) -> tuple[nn.Module, np.ndarray, list[dict]]:
    """Train ``model`` on (x_fit, y_fit); return it at its best validation epoch, its per-voxel val r, history.

    Inputs come in CPU memory (float16 tokens). On a CUDA device, with ``stage``, they are copied there once when
    they take at most half of its free memory (`stage_inputs`); otherwise they move batch by batch. With
    ``checkpoint``, every epoch's state is saved there and a saved state with the same ``key`` is resumed.
    """
    device = next(model.parameters()).device
    if stage:
        x_fit, y_fit, x_val = stage_inputs(device, x_fit, y_fit, x_val)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_drop, gamma=0.5)
    run = {"epoch": 0, "best_r": -np.inf, "best_state": None, "best_val": None, "stale": 0, "history": [], "done": 0}
    start = cfg.entropy_start if cfg.attention_entropy else 0
    if cfg.attention_entropy and not hasattr(model, "content_queries"):
        raise BrainattError(f"attention_entropy needs an attention model; {type(model).__name__} has no queries")
    if start >= cfg.epochs:
        raise BrainattError(f"entropy_start {start} leaves no epoch of the {cfg.epochs} to select from")
    if checkpoint is not None and checkpoint.exists():
        run = _resume(checkpoint, key, model, opt, sched, gen, run, desc)
    for epoch in range(run["epoch"], cfg.epochs):
        if run["done"]:
            break
        t0 = time.time()
        prior = epoch >= start
        entropy_weight = cfg.attention_entropy if prior else 0.0
        model.train()
        order = torch.randperm(len(x_fit), generator=gen)
        total = 0.0
        for i in range(0, len(order), cfg.batch):
            idx = order[i : i + cfg.batch]
            loss = _loss(model, x_fit[idx].to(device), y_fit[idx].to(device), entropy_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        r_val = pearson_r(y_val, predict(model, x_val))
        mean_r = float(r_val.mean())
        run["history"].append(
            {"epoch": epoch, "train_loss": total / len(order), "val_r": mean_r, "s": time.time() - t0}
        )
        log.info(
            "%s epoch %d: train loss %.4f, val r %.4f (%.1f s)",
            desc,
            epoch,
            total / len(order),
            mean_r,
            time.time() - t0,
        )
        run["epoch"] = epoch + 1
        if prior:  # select only models trained under the full objective
            if mean_r > run["best_r"]:
                best = {"best_r": mean_r, "best_state": copy.deepcopy(model.state_dict()), "best_val": r_val}
                run.update(best, stale=0)
            else:
                run["stale"] += 1
                run["done"] = int(run["stale"] >= cfg.patience)
        if checkpoint is not None:
            _save(checkpoint, key, model, opt, sched, gen, run)
    model.load_state_dict(run["best_state"])
    return model.eval(), run["best_val"], run["history"]


def _save(
    path: Path,
    key: str,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    run: dict[str, Any],
) -> None:
    """The training state after an epoch, written atomically (a kill mid-write leaves the previous one)."""
    state = {
        **run,
        "best_val": None if run["best_val"] is None else torch.from_numpy(np.asarray(run["best_val"])),
        "key": key,
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "sched": sched.state_dict(),
        "gen": gen.get_state(),
        "rng": torch.get_rng_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _resume(
    path: Path,
    key: str,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    run: dict[str, Any],
    desc: str,
) -> dict[str, Any]:
    """Restore the state saved at ``path`` into the training objects and return the run's progress; a state saved
    under another key (other settings or data) is ignored and training starts afresh."""
    try:
        state = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        log.warning("%s: unreadable checkpoint %s (%s): starting afresh", desc, path, e)
        return run
    if state.get("key") != key:
        log.info("%s: checkpoint %s is for other settings or data: starting afresh", desc, path)
        return run
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    gen.set_state(state["gen"])
    torch.set_rng_state(state["rng"])
    best_val = state["best_val"]
    log.info("%s: resumed from %s at epoch %d", desc, path, state["epoch"])
    return {k: state[k] for k in run} | {"best_val": None if best_val is None else best_val.numpy()}


def stage_inputs(device: torch.device, *inputs: Any) -> tuple[Any, ...]:
    """``inputs`` copied to a CUDA ``device`` when together they take at most half of its free memory; else, on
    the CPU, or when one is not a tensor (bench/encoder.py's live backbone), returned as they are. Copying each
    batch from host memory (32 × 31×31×768 float16 tokens: 47 MB) can take as long as the GPU step on it;
    bench/encoder.py ``--gpu-size`` times both ways."""
    tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
    if device.type != "cuda" or len(tensors) < len(inputs):
        return inputs
    free, _ = torch.cuda.mem_get_info(device)
    if sum(x.nbytes for x in tensors) > free // 2:
        return inputs
    return tuple(x.to(device) for x in inputs)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, entropy_weight: float) -> torch.Tensor:
    """MSE, plus ``entropy_weight`` × the mean entropy of the content-ROI queries' attention maps (if any)."""
    if not entropy_weight or not len(model.content_queries):
        return nn.functional.mse_loss(model(x), y)
    pred, maps = model(x, return_attention=True)
    return nn.functional.mse_loss(pred, y) + entropy_weight * attention_entropy(maps[:, model.content_queries])


def ensemble_weights(val_r: np.ndarray, temperature: float) -> np.ndarray:
    """Per-voxel model weights ``softmax(τ·r_val)`` over models: ``(M, V)``, each column sums to 1.

    The reference TBE weights summed to the number of runs (a scaled prediction); these are normalised.
    """
    z = temperature * np.asarray(val_r, dtype=np.float64)
    z -= z.max(0, keepdims=True)
    w = np.exp(z)
    return w / w.sum(0, keepdims=True)
