"""Training regimes: per-subject models, the cross-subject model, and adapting it to a new subject.

- ``single``: one subject's own model (no builder losses), trained on all of its training trials (or on its first
  ``n_images`` images: the from-scratch baseline);
- ``bridge``: one model for the source subjects, with the reconstruction and cycle losses;
- ``reset``: reset-tuning to a held-out subject: a fresh embedder and builder for it, everything else frozen;
  every step pairs a target batch with a batch of one source subject (rotating), which supplies contrastive
  negatives and the cycle source → target builder → target embedder;
- ``finetune``: the same batches with every parameter trained.

Each step draws ``batch`` trials per subject in the step (subjects with different voxel counts share a step),
AdamW (no decay on biases and norms) with a one-cycle schedule, gradient clipping, bf16 autocast on a GPU.
Checkpoints every ``checkpoint_every`` epochs in the output folder; a rerun resumes from the last one.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from brainatt.io import BrainattError, atomic_path
from brainatt.mindbridge.data import SubjectData, Targets
from brainatt.mindbridge.model import MindBridge, MindBridgeConfig, count_parameters

log = logging.getLogger(__name__)
REGIMES = ("single", "bridge", "reset", "finetune")


@dataclass
class TrainConfig:
    """Optimisation settings (config section ``mindbridge.train``)."""

    epochs: int = 30
    steps: int = 0  # > 0: this many optimizer steps in all, spread over the epochs (whatever the data size)
    batch: int = 50  # trials per subject per step
    lr: float = 1e-3
    weight_decay: float = 0.01
    pct_start: float = 0.1
    clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 5

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(cfg) - known
        if unknown:
            raise BrainattError(f"mindbridge.train: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        return cls(**cfg)


def _param_groups(model: torch.nn.Module, trainable: list[torch.nn.Parameter], wd: float) -> list[dict[str, Any]]:
    ids = {id(p) for p in trainable}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if id(p) not in ids:
            continue
        (no_decay if p.ndim < 2 or name.endswith("bias") else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def fit(
    model: MindBridge,
    data: dict[str, SubjectData],
    targets: Targets,
    cfg: TrainConfig,
    trainable: list[torch.nn.Parameter],
    schedule: list[list[str]],
    cycle_pairs: list[tuple[str, str]] | None = None,
    checkpoint: Path | None = None,
    device: str = "cpu",
) -> list[dict[str, float]]:
    """Train ``trainable`` (every other parameter is frozen) for ``cfg.epochs`` epochs; the per-epoch mean losses.

    ``schedule``: the subjects of each step, cycled (e.g. ``[["s1","s2"]]`` for both in every step, or
    ``[["t","s1"], ["t","s2"]]`` to rotate the source). An epoch has as many steps as the largest subject needs to
    see its trials once at ``cfg.batch`` per step, or ``cfg.steps / cfg.epochs`` when ``cfg.steps`` is set.
    """
    model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    subjects = sorted({s for step in schedule for s in step})
    steps = max(math.ceil(len(data[s].trials) / cfg.batch) for s in subjects)
    if cfg.steps:
        steps = math.ceil(cfg.steps / cfg.epochs)
    opt = torch.optim.AdamW(_param_groups(model, trainable, cfg.weight_decay), lr=cfg.lr, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=cfg.pct_start, final_div_factor=100
    )
    x = {s: torch.from_numpy(data[s].trials) for s in subjects}
    rows = {s: torch.from_numpy(targets.rows(data[s].trial_ids)) for s in subjects}
    image, text = torch.from_numpy(targets.image), torch.from_numpy(targets.text)
    start, history = 0, []
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, history = int(state["epoch"]), json.loads(state["history"])
        log.info("resumed from %s at epoch %d", checkpoint, start)
    amp = device.startswith("cuda")
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        torch.manual_seed(cfg.seed * 100003 + epoch)
        rng = random.Random(cfg.seed * 100003 + epoch)
        order = {s: torch.randperm(len(x[s])) for s in subjects}
        model.train()
        sums: dict[str, float] = {}
        for step in range(steps):
            batch, idx = {}, {}
            for s in schedule[step % len(schedule)]:
                perm = order[s]
                i = perm[(torch.arange(cfg.batch) + step * cfg.batch) % len(perm)]
                batch[s], idx[s] = x[s][i].to(device), rows[s][i]
            all_rows = torch.cat(list(idx.values()))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                losses = model.losses(batch, image[all_rows].to(device), text[all_rows].to(device), rng, cycle_pairs)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_(trainable, cfg.clip)
            opt.step()
            sched.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        history.append({k: v / steps for k, v in sums.items()})
        log.info("epoch %d/%d: loss %.4f (%.1f s)", epoch + 1, cfg.epochs, history[-1]["total"], time.time() - t0)
        if checkpoint is not None and ((epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs):
            state = {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "epoch": torch.tensor(epoch + 1),
                "history": json.dumps(history),
            }
            with atomic_path(checkpoint) as tmp:
                torch.save(state, tmp)
    for p in model.parameters():
        p.requires_grad_(False)
    return history


def save_model(model: MindBridge, out: Path, extra: dict[str, Any]) -> None:
    """``model.safetensors`` and ``model.json`` (config, subjects' voxel counts, target shapes) in ``out``."""
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    meta = {
        "config": model.cfg.to_dict(),
        "voxels": model.voxels,
        "image_shape": list(model.image_shape),
        "text_shape": list(model.text_shape),
        "parameters": count_parameters(model),
        **extra,
    }
    (out / "model.json").write_text(json.dumps(meta, indent=1, sort_keys=True))


def load_model(folder: str | Path) -> MindBridge:
    """A saved MindBridge model (eval mode, on the CPU)."""
    folder = Path(folder)
    meta_path = folder / "model.json"
    if not meta_path.exists() or not (folder / "model.safetensors").exists():
        raise BrainattError(f"{folder}: no model.json/model.safetensors: rerun the mindbridge rule that makes it")
    meta = json.loads(meta_path.read_text())
    model = MindBridge(
        meta["voxels"], meta["image_shape"], meta["text_shape"], MindBridgeConfig.from_config(meta["config"])
    )
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.eval()


def train_regime(
    regime: str,
    data: dict[str, SubjectData],
    targets: Targets,
    model_cfg: MindBridgeConfig,
    cfg: TrainConfig,
    target: str | None = None,
    init: MindBridge | None = None,
    checkpoint: Path | None = None,
    device: str = "cpu",
) -> tuple[MindBridge, list[dict[str, float]]]:
    """Build and train the model of one regime over ``data`` (for reset/finetune: sources + ``target``)."""
    if regime not in REGIMES:
        raise BrainattError(f"unknown MindBridge regime {regime!r}: one of {REGIMES}")
    torch.manual_seed(cfg.seed)
    shapes = (targets.image.shape[1:], targets.text.shape[1:])
    if regime in ("single", "bridge"):
        if regime == "single" and len(data) != 1:
            raise BrainattError(f"a per-subject model takes one subject, got {sorted(data)}")
        if regime == "single":
            model_cfg = MindBridgeConfig(**{**model_cfg.to_dict(), "rec": 0.0, "cyc": 0.0})
        model = MindBridge({s: d.n_voxels for s, d in data.items()}, *shapes, model_cfg)
        return model, fit(model, data, targets, cfg, list(model.parameters()), [sorted(data)], None, checkpoint, device)
    if init is None or target is None:
        raise BrainattError(f"regime {regime} needs the cross-subject model (--init) and a --target subject")
    if target in init.voxels:
        raise BrainattError(f"{target} is already one of the model's subjects {sorted(init.voxels)}: hold it out")
    model = init
    model.add_subject(target, data[target].n_voxels)
    sources = [s for s in init.voxels if s != target]
    missing = [s for s in sources if s not in data]
    if missing:
        raise BrainattError(f"regime {regime} needs the source subjects' responses too: missing {missing}")
    trainable = model.subject_parameters(target) if regime == "reset" else list(model.parameters())
    schedule = [[target, s] for s in sources]
    history = fit(model, data, targets, cfg, trainable, schedule, [(s, target) for s in sources], checkpoint, device)
    return model, history
