"""The MindBridge model and its losses.

Per subject s: aggregation f_s (adaptive max or average pooling of the voxel vector to ``pool`` values, or none
when the embedder's first linear layer takes the voxels directly), embedder E_s (residual adapter → linear →
LayerNorm → GELU → dropout) and builder B_s (embedding back to the aggregated fMRI). Shared: the translator T
(residual MLP blocks) and the image and text heads (dense, or low-rank through ``rank`` values).

Losses (`MindBridge.losses`): SoftCLIP with a fixed temperature plus a cosine term for the image and the text
embeddings (both flattened and L2-normalised), the builder's reconstruction of the aggregated fMRI, and the cycle
loss MSE(E_a(x_a), E_b(B_b(E_a(x_a)))) between a random pair of subjects a ≠ b.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from brainatt.io import BrainattError

AGGREGATIONS = ("max", "avg", "linear")


@dataclass
class MindBridgeConfig:
    """Model sizes and loss weights (config section ``mindbridge.model``)."""

    aggregation: str = "max"  # max | avg: pool the voxels to ``pool`` values; linear: no pooling
    pool: int = 1024
    hidden: int = 256
    blocks: int = 2
    adapter: int = 64
    rank: int = 0  # 0: dense heads; else low-rank heads through this many values
    dropout_embedder: float = 0.5
    dropout_translator: float = 0.15
    temperature: float = 0.005
    # The reference's 1e4·MSE on unit vectors is 2e4/D·(1 − cos): ≈ 40 for 512-d pooled embeddings, ≈ 156 for the
    # kit's 128-d ones (0.05 for 257×768 tokens); 40 is the demo's. Without it SoftCLIP alone ranks well but leaves
    # predictions far from the targets (mean cosine ≈ 0.08 on the demo), which is what a diffusion model is
    # conditioned on.
    cos_image: float = 40.0
    cos_text: float = 40.0
    text: float = 1.0  # weight of the text losses (SoftCLIP + cosine)
    rec: float = 1.0
    cyc: float = 1.0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> MindBridgeConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(cfg) - known
        if unknown:
            raise BrainattError(f"mindbridge.model: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        out = cls(**cfg)
        if out.aggregation not in AGGREGATIONS:
            raise BrainattError(f"mindbridge.model.aggregation must be one of {AGGREGATIONS}, got {out.aggregation!r}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Adapter(nn.Module):
    """x + up(ReLU(down(x))), the up-projection zero-initialised: the identity at initialisation."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.relu(self.down(x)))


class Aggregate(nn.Module):
    """A subject's voxel vector (B, V) → (B, P): adaptive max or average pooling, or the identity."""

    def __init__(self, kind: str, pool: int) -> None:
        super().__init__()
        self.kind, self.pool = kind, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            return F.adaptive_max_pool1d(x[:, None], self.pool)[:, 0]
        if self.kind == "avg":
            return F.adaptive_avg_pool1d(x[:, None], self.pool)[:, 0]
        return x


class Embedder(nn.Module):
    """E_s: aggregated fMRI (B, P) → (B, h)."""

    def __init__(self, dim: int, cfg: MindBridgeConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            Adapter(dim, cfg.adapter),
            nn.Linear(dim, cfg.hidden),
            nn.LayerNorm(cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout_embedder),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Builder(nn.Module):
    """B_s: embedding (B, h) → aggregated fMRI (B, P): linear → residual adapter, so nothing bounds its outputs
    (the reference's LayerNorm → GELU before the zero-initialised adapter floors early outputs at ≈ −0.17)."""

    def __init__(self, dim: int, cfg: MindBridgeConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cfg.hidden, dim), Adapter(dim, cfg.adapter))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Block(nn.Module):
    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def head(hidden: int, out: int, rank: int) -> nn.Module:
    """A dense Linear(hidden → out), or a low-rank Linear(hidden → rank) → Linear(rank → out) when ``rank``."""
    if rank:
        return nn.Sequential(nn.Linear(hidden, rank, bias=False), nn.Linear(rank, out))
    return nn.Linear(hidden, out)


class MindBridge(nn.Module):
    """One decoder for many subjects: per-subject embedders and builders around a shared translator and heads.

    ``voxels`` maps each subject to its voxel count; ``image_shape`` and ``text_shape`` are the targets' (tokens,
    dim). Subjects are added later with `add_subject` (reset-tuning).
    """

    def __init__(
        self,
        voxels: dict[str, int],
        image_shape: tuple[int, int],
        text_shape: tuple[int, int],
        cfg: MindBridgeConfig,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_shape, self.text_shape = tuple(image_shape), tuple(text_shape)
        self.voxels: dict[str, int] = {}
        self.aggregate = nn.ModuleDict()
        self.embedders = nn.ModuleDict()
        self.builders = nn.ModuleDict()
        for subject, n in voxels.items():
            self.add_subject(subject, n)
        self.translator = nn.Sequential(*(Block(cfg.hidden, cfg.dropout_translator) for _ in range(cfg.blocks)))
        self.image_head = head(cfg.hidden, self.image_shape[0] * self.image_shape[1], cfg.rank)
        self.text_head = head(cfg.hidden, self.text_shape[0] * self.text_shape[1], cfg.rank)

    def add_subject(self, subject: str, n_voxels: int) -> None:
        """A freshly initialised aggregation, embedder and builder for ``subject`` (``n_voxels`` voxels)."""
        dim = n_voxels if self.cfg.aggregation == "linear" else self.cfg.pool
        self.voxels[subject] = n_voxels
        self.aggregate[subject] = Aggregate(self.cfg.aggregation, self.cfg.pool)
        self.embedders[subject] = Embedder(dim, self.cfg)
        self.builders[subject] = Builder(dim, self.cfg)

    def subject_parameters(self, subject: str) -> list[nn.Parameter]:
        return [*self.embedders[subject].parameters(), *self.builders[subject].parameters()]

    def embed(self, subject: str, x: torch.Tensor) -> torch.Tensor:
        return self.embedders[subject](self.aggregate[subject](x))

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, h) → image (B, T_i, D_i) and text (B, T_t, D_t) predictions."""
        t = self.translator(z)
        return self.image_head(t).view(-1, *self.image_shape), self.text_head(t).view(-1, *self.text_shape)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions for a batch of several subjects (each with its own voxel count), concatenated in order."""
        return self.decode(torch.cat([self.embed(s, x) for s, x in batch.items()]))

    def losses(
        self,
        batch: dict[str, torch.Tensor],
        image: torch.Tensor,
        text: torch.Tensor,
        rng: random.Random,
        cycle_pairs: list[tuple[str, str]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every loss term of one step; ``image``/``text`` are the targets of the concatenated batch.

        ``cycle_pairs``: the (a, b) pairs the cycle loss may draw from (default: any); one ordered pair of the
        batch's subjects among them is drawn per step.
        """
        cfg = self.cfg
        pooled = {s: self.aggregate[s](x) for s, x in batch.items()}  # aggregated once: input and rec target
        z = {s: self.embedders[s](f) for s, f in pooled.items()}
        pred_img, pred_txt = self.decode(torch.cat(list(z.values())))
        out = {
            "softclip_image": soft_clip_loss(pred_img, image, cfg.temperature),
            "cos_image": cosine_loss(pred_img, image),
            "softclip_text": soft_clip_loss(pred_txt, text, cfg.temperature),
            "cos_text": cosine_loss(pred_txt, text),
        }
        zero = pred_img.new_zeros(())
        out["rec"] = (
            torch.stack([F.mse_loss(self.builders[s](z[s]), pooled[s]) for s in batch]).mean() if cfg.rec else zero
        )
        pairs = [(a, b) for a in batch for b in batch if a != b]
        if cycle_pairs is not None:
            pairs = [p for p in pairs if p in cycle_pairs]
        if cfg.cyc and pairs:
            a, b = rng.choice(pairs)
            out["cyc"] = F.mse_loss(self.embedders[b](self.builders[b](z[a])), z[a])
        else:
            out["cyc"] = zero
        out["total"] = (
            out["softclip_image"]
            + cfg.cos_image * out["cos_image"]
            + cfg.text * (out["softclip_text"] + cfg.cos_text * out["cos_text"])
            + cfg.rec * out["rec"]
            + cfg.cyc * out["cyc"]
        )
        return out


def _flat_unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.flatten(1).float(), dim=-1)


def soft_clip_loss(pred: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """SoftCLIP: symmetric cross-entropy of softmax(pred·targetᵀ/τ) against the soft labels softmax(target·targetᵀ/τ).

    Both are flattened and L2-normalised; the loss is minimal (the soft labels' entropy) at pred = target.
    """
    p, t = _flat_unit(pred), _flat_unit(target)
    labels = torch.softmax(t @ t.T / temperature, dim=-1)
    logits = p @ t.T / temperature
    forward = -(labels * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    backward = -(labels * F.log_softmax(logits.T, dim=-1)).sum(-1).mean()  # t·tᵀ is symmetric
    return (forward + backward) / 2


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean 1 − cos between flattened predictions and targets."""
    return (1 - (_flat_unit(pred) * _flat_unit(target)).sum(-1)).mean()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
