"""Transformer attention-routing encoder (Adeli, Sun & Kriegeskorte): ROI queries cross-attend to patch tokens.

Cached backbone tokens ``(B, gh, gw, C)`` are the memory; 2-D sine position codes are added to the keys only
(never to the values), so a query can route by location, by content, or both. One learned query per ROI and
hemisphere (plus a ``rest`` query) — or one per voxel — passes through pre-norm cross-attention decoder
layer(s) without query self-attention (the reference model's default), and each voxel reads its query's output
with its own linear weights (`VoxelReadout`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from brainatt.encoding.readout import VoxelReadout


def sine_positions(grid: tuple[int, int], width: int, temperature: float = 1e4) -> torch.Tensor:
    """DETR's normalised 2-D sine code: ``(gh·gw, width)``, concat(pos_y, pos_x), positions scaled to (0, 2π]."""
    if width % 4:
        raise ValueError(f"token width {width} must be a multiple of 4 for 2-D sine positions")
    gh, gw = grid
    npf = width // 2
    y = torch.arange(1, gh + 1, dtype=torch.float32)[:, None].expand(gh, gw) / gh * 2 * math.pi
    x = torch.arange(1, gw + 1, dtype=torch.float32)[None, :].expand(gh, gw) / gw * 2 * math.pi
    dim_t = temperature ** (2 * (torch.arange(npf) // 2) / npf)

    def code(p: torch.Tensor) -> torch.Tensor:
        p = p.reshape(-1, 1) / dim_t
        return torch.stack([p[:, 0::2].sin(), p[:, 1::2].cos()], dim=2).flatten(1)

    return torch.cat([code(y), code(x)], dim=1)


class CrossAttentionLayer(nn.Module):
    """Pre-norm decoder layer without self-attention: t += Attn(LN(t) + E_q, M + P, M); t += FFN(LN(t))."""

    def __init__(self, width: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.norm_q = nn.LayerNorm(width)
        self.norm_ff = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, width))
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, H, L, d)

    def attend(
        self, t: torch.Tensor, query_embed: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each head's attention output ``(B, H, Q, d)`` and, if asked, its maps ``(B, H, Q, tokens)``."""
        q = self._split(self.q(self.norm_q(t) + query_embed))
        k = self._split(self.k(memory + pos))
        v = self._split(self.v(memory))
        if need_weights:  # explicit softmax only when maps are asked for; otherwise the fused SDPA path
            w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
            return nn.functional.dropout(w, self.attn_dropout, self.training) @ v, w
        p = self.attn_dropout if self.training else 0.0
        return nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=p), None

    def mix(self, t: torch.Tensor, heads_out: torch.Tensor) -> torch.Tensor:
        """The heads' outputs through the output projection, then the FFN, each added to the residual ``t``."""
        t = t + self.dropout(self.out(heads_out.transpose(1, 2).flatten(2)))
        return t + self.dropout(self.ff(self.norm_ff(t)))

    def forward(
        self, t: torch.Tensor, query_embed: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        heads_out, weights = self.attend(t, query_embed, memory, pos, need_weights)
        return self.mix(t, heads_out), weights


class AttentionRoutingEncoder(nn.Module):
    """Tokens ``(B, gh, gw, C)`` → responses ``(B, V)``.

    Parameters
    ----------
    voxel_query : (V,) index of each voxel's query (ROI × hemisphere), or ``arange(V)`` for per-voxel queries.
    n_queries : number of queries.
    grid, token_width : token grid and the backbone's token width.
    width : decoder width; the reference model has none of its own (width = token width, no input projection),
        which is the default. Another width adds a linear projection of the tokens.
    depth, heads, ff, dropout : decoder size.
    content_queries : indices of the queries of content (category) ROIs, the ones `attention_entropy` regularises.
    positions : add the sine position codes to the keys (default). ``False`` leaves the keys without them, the
        reference code's commented-out ``pos_embed = 0``: queries can then route only by what a token holds.
    """

    def __init__(
        self,
        voxel_query: np.ndarray,
        n_queries: int,
        grid: tuple[int, int],
        token_width: int,
        width: int | None = None,
        depth: int = 1,
        heads: int = 16,
        ff: int = 512,
        dropout: float = 0.1,
        content_queries: np.ndarray | None = None,
        positions: bool = True,
    ) -> None:
        super().__init__()
        width = width or token_width
        self.grid = tuple(grid)
        self.project = nn.Identity() if width == token_width else nn.Linear(token_width, width)
        self.query_embed = nn.Parameter(torch.randn(n_queries, width))
        pos = sine_positions(self.grid, width)
        self.register_buffer("pos", pos if positions else torch.zeros_like(pos), persistent=False)
        self.layers = nn.ModuleList(CrossAttentionLayer(width, heads, ff, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.readout = VoxelReadout(voxel_query, width)
        content = np.zeros(0, np.int64) if content_queries is None else np.asarray(content_queries, np.int64)
        self.register_buffer("content_queries", torch.from_numpy(content), persistent=False)
        for layer in self.layers:
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def _last_heads(
        self, tokens: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The last layer's input ``t``, its heads' outputs and (if asked) their maps ``(B, H, Q, tokens)``."""
        memory = self.project(tokens.to(self.query_embed.device).flatten(1, 2).float())
        t = torch.zeros(memory.shape[0], *self.query_embed.shape, device=memory.device)
        for layer in self.layers[:-1]:
            t, _ = layer(t, self.query_embed, memory, self.pos, False)
        heads_out, weights = self.layers[-1].attend(t, self.query_embed, memory, self.pos, need_weights)
        return t, heads_out, weights

    def _respond(self, t: torch.Tensor, heads_out: torch.Tensor) -> torch.Tensor:
        return self.readout(self.norm(self.layers[-1].mix(t, heads_out)))

    def forward(
        self, tokens: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Responses ``(B, V)``; with ``return_attention`` also the head-averaged maps ``(B, Q, gh·gw)``."""
        t, heads_out, weights = self._last_heads(tokens, need_weights=return_attention)
        pred = self._respond(t, heads_out)
        return (pred, combine_heads(weights)) if return_attention else pred

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Eval mode (no dropout) for the analysis methods, then back to the mode the model was in."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @torch.no_grad()
    def head_maps(self, tokens: torch.Tensor) -> torch.Tensor:
        """Last layer's cross-attention per head and query: ``(B, H, Q, gh, gw)``, sums to 1 per map."""
        with self._evaluating():
            _, _, weights = self._last_heads(tokens, need_weights=True)
        return weights.unflatten(-1, self.grid)

    @torch.no_grad()
    def attention(self, tokens: torch.Tensor, head_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Last layer's cross-attention per query: ``(B, Q, gh, gw)``, sums to 1 per map.

        Heads are averaged (the reference's maps), or weighted by ``head_weights``, ``(B, H, Q)`` per image such as
        `head_importance`, or ``(H, Q)`` for all images, summing to 1 over heads.
        """
        return combine_heads(self.head_maps(tokens), head_weights)

    @torch.no_grad()
    def head_importance(
        self, tokens: torch.Tensor, reference: torch.Tensor | None = None, batch: int = 256
    ) -> torch.Tensor:
        """``(B, H, Q)``: each last-layer head's share of what each image sends to each query's voxels.

        Mean ablation: head h's output is replaced by its mean over the ``reference`` images (default: ``tokens``),
        for every query at once (queries do not interact), and its importance for query q in an image is the
        squared change this makes to that image's predictions of q's voxels, summed over them. Each image's weights
        for a query sum to 1 over heads; where no head moves them they are uniform. Per image, because which head
        carries a query's signal depends on what the image holds (a head that finds words says nothing in an image
        without any). No responses are used. With a fixed reference (`fit_encoder` uses the validation images) an
        image's weights depend only on the model and that image. The reference averages its maps over heads, which
        gives as much say to a head that carries nothing to a query's voxels as to the one that carries most of it.
        """
        reference = tokens if reference is None else reference
        if not len(tokens) or not len(reference):
            raise ValueError("head_importance needs at least one image and one reference image")
        with self._evaluating():  # chunks, so memory stays bounded by one chunk
            chunks = range(0, len(reference), batch)
            mean_out = sum(self._last_heads(reference[i : i + batch], False)[1].sum(0) for i in chunks)
            mean_out = mean_out / len(reference)  # (H, Q, d)
            heads, n_queries = mean_out.shape[:2]
            change = torch.zeros(len(tokens), heads, n_queries)
            for i in range(0, len(tokens), batch):
                t, heads_out, _ = self._last_heads(tokens[i : i + batch], False)
                pred = self._respond(t, heads_out)
                for h in range(heads):
                    ablated = heads_out.clone()
                    ablated[:, h] = mean_out[h]
                    squared = (self._respond(t, ablated) - pred) ** 2  # (b, V)
                    per_query = torch.zeros(len(squared), n_queries, device=squared.device)
                    change[i : i + batch, h] = per_query.index_add_(1, self.readout.voxel_query, squared).cpu()
        total = change.sum(1, keepdim=True)
        return torch.where(total > 0, change / total.clamp_min(1e-30), 1 / heads)


def combine_heads(maps: torch.Tensor, head_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-head maps ``(B, H, Q, ...)`` → ``(B, Q, ...)``: the plain head mean, or weighted by ``(B, H, Q)`` (per
    image) or ``(H, Q)`` (all images)."""
    if head_weights is None:
        return maps.mean(1)
    w = head_weights
    if w.dim() not in (2, 3) or w.shape[-2:] != maps.shape[1:3] or (w.dim() == 3 and len(w) != len(maps)):
        raise ValueError(f"head weights {tuple(w.shape)} do not fit maps {tuple(maps.shape)}: need (B, H, Q) or (H, Q)")
    return (maps * w.to(maps)[(..., *(None,) * (maps.dim() - 3))]).sum(1)


def attention_entropy(maps: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of attention maps ``(..., tokens)`` that each sum to 1."""
    return -(maps * torch.log(maps.clamp_min(1e-12))).sum(-1).mean()
