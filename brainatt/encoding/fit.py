"""Fit one encoder for one subject from the feature cache and write its outputs (``results/encoding/{s}/{enc}/``).

Encoders:
- ``transformer``: attention-routing encoder, an ensemble over cached layers × seeds;
- ``factorized``: space × feature readout, the same ensemble;
- ``ridge_pooled``: `RidgeCV` on the backbone's pooled embedding;
- ``ridge_tokens``: `RidgeCV` on the same patch tokens the transformer sees (flattened, PCA-reduced with the
  PCA fit on training images only), per layer, each voxel keeping the layer with the best CV score.
Outputs: ``model.safetensors`` + ``model.json``, ``test_pred.h5``, ``voxel_scores.tsv`` and, for the
transformer, ``attention.h5`` (test-image attention maps per query, ensemble mean; heads weighted in each image by
their mean-ablation importance, the validation images giving the ablation's mean, and the reference's plain head
mean beside them).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.decomposition import PCA

from brainatt.contracts.features import FeatureCache
from brainatt.encoding.data import SubjectData, assign_queries, load_subject, validation_split
from brainatt.encoding.evaluate import NC_MIN, load_truth, voxel_scores
from brainatt.encoding.factorized import FactorizedEncoder
from brainatt.encoding.ridge import RidgeCV
from brainatt.encoding.train import TrainConfig, ensemble_predict, fit, predict
from brainatt.encoding.transformer import AttentionRoutingEncoder, combine_heads
from brainatt.io import BrainattError, atomic_h5, atomic_path
from brainatt.models.loading import default_device

log = logging.getLogger(__name__)
ENCODERS = ("transformer", "factorized", "ridge_pooled", "ridge_tokens")


@dataclass(frozen=True)
class EncodingConfig:
    """The ``encoding`` section of the config (defaults here; the schema documents each key)."""

    layers: tuple[int, ...] | None = None  # None: every cached layer
    seeds: tuple[int, ...] = (0,)
    val_fraction: float = 0.1
    split_seed: int = 0
    ensemble_temperature: float = 20.0
    transformer: dict[str, Any] = field(default_factory=dict)
    factorized: dict[str, Any] = field(default_factory=dict)
    ridge: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> EncodingConfig:
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k != "encoders"}
        return cls(**cfg)


ARCH_KEYS = {
    "transformer": ("width", "depth", "heads", "ff", "dropout", "positions", "queries"),
    "factorized": ("maps",),
}


def split_settings(section: dict[str, Any], encoder: str) -> tuple[dict[str, Any], TrainConfig]:
    """An ``encoding.<encoder>`` section → its architecture settings and its `TrainConfig` (unknown keys raise)."""
    unknown = set(section) - set(ARCH_KEYS[encoder]) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise BrainattError(f"encoding.{encoder}: unknown settings {sorted(unknown)}")
    arch = {k: v for k, v in section.items() if k in ARCH_KEYS[encoder]}
    train = TrainConfig(**{k: v for k, v in section.items() if k not in ARCH_KEYS[encoder]})
    return arch, train


def build_model(encoder: str, arch: dict[str, Any], sub: SubjectData, grid: tuple[int, int], width: int):
    """The torch encoder for a subject, with its queries (transformer) or spatial maps (factorized)."""
    names, index = assign_queries(sub, arch.get("queries", arch.get("maps", "roi")))
    if encoder == "transformer":
        kw = {k: arch[k] for k in ARCH_KEYS["transformer"] if k in arch and k != "queries"}
        content = np.unique(index[sub.family == "category"])  # with shared (hemisphere) queries: every query
        return AttentionRoutingEncoder(index, len(names), grid, width, content_queries=content, **kw), names
    return FactorizedEncoder(index, len(names), grid, width), names


def load_members(folder: str | Path, sub: SubjectData, width: int) -> tuple[dict[str, Any], list[torch.nn.Module]]:
    """A fitted torch encoder's ``model.json`` and its ensemble members (eval mode, in ``info["members"]`` order),
    rebuilt from ``model.safetensors`` as `fit_encoder` writes them; ``width`` is the cached tokens' width. Each
    ``info["members"]`` entry gains its per-voxel ``ensemble_weights`` ``(V,)``."""
    folder = Path(folder)
    if not (folder / "model.json").exists():
        raise BrainattError(f"{folder}: no fitted encoder here: run the encode rule for it")
    info = json.loads((folder / "model.json").read_text())
    state = load_file(folder / "model.safetensors")
    models = []
    for m in range(len(info["members"])):
        model, _ = build_model(info["encoder"], info["arch"], sub, tuple(info["grid"]), width)
        prefix = f"member{m}."
        model.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        models.append(model.eval())
        info["members"][m]["ensemble_weights"] = state["ensemble_weights"][m].numpy()
    return info, models


def train_member(
    encoder: str,
    settings: dict[str, Any],
    sub: SubjectData,
    grid: tuple[int, int],
    x: torch.Tensor,
    split: tuple[np.ndarray, np.ndarray],
    seed: int,
    device: str = "cpu",
    desc: str = "",
) -> tuple[torch.nn.Module, np.ndarray, list[dict], list[str]]:
    """One ensemble member on training tokens ``x``: seeded initialisation, trained on the fit images of ``split``
    (fit, validation indices), best epoch by validation r. Returns the model, its per-voxel validation r, the
    training history and the query names. ``settings`` is the ``encoding.<encoder>`` section."""
    arch, train = split_settings(settings, encoder)
    fit_idx, val_idx = split
    torch.manual_seed(seed)
    model, queries = build_model(encoder, arch, sub, grid, x.shape[-1])
    y = torch.from_numpy(sub.train_y)
    run = dataclasses.replace(train, seed=seed)
    model, r, history = fit(model.to(device), x[fit_idx], y[fit_idx], x[val_idx], sub.train_y[val_idx], run, desc)
    return model, r, history, queries


def _fit_torch(encoder: str, sub: SubjectData, cache: FeatureCache, cfg: EncodingConfig, device: str) -> dict:
    settings = getattr(cfg, encoder)
    arch, train = split_settings(settings, encoder)
    split = validation_split(len(sub.train_ids), cfg.val_fraction, cfg.split_seed)
    members, preds, val_r, state, attention = [], [], [], {}, []
    for layer in cfg.layers or cache.layers:
        x = torch.from_numpy(cache.tokens(layer, sub.train_ids))
        x_test = torch.from_numpy(cache.tokens(layer, sub.test_ids))
        for seed in cfg.seeds:
            desc = f"{encoder} L{layer} s{seed}"
            model, r, history, queries = train_member(encoder, settings, sub, cache.grid, x, split, seed, device, desc)
            m = len(members)
            members.append({"layer": layer, "seed": seed, "val_r": float(r.mean()), "epochs": len(history)})
            preds.append(predict(model, x_test))
            val_r.append(r)
            state.update({f"member{m}.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
            if encoder == "transformer":
                attention.append(_test_maps(model, x_test, x[split[1]]))
    weights, pred = ensemble_predict(np.stack(val_r), np.stack(preds), cfg.ensemble_temperature)
    state["ensemble_weights"] = torch.from_numpy(weights.astype(np.float32))
    info = {"arch": arch, "train": dataclasses.asdict(train), "members": members, "queries": queries}
    voxel_query = model.readout.voxel_query.cpu().numpy()  # the same in every member
    return {"pred": pred, "state": state, "info": info, "attention": attention, "voxel_query": voxel_query}


def _test_maps(
    model: AttentionRoutingEncoder, x_test: torch.Tensor, x_val: torch.Tensor, chunk: int = 256
) -> dict[str, torch.Tensor]:
    """Test-image maps ``(N, Q, gh, gw)``, heads weighted by their importance in each image (ablated to their mean
    over the validation images) and the reference's plain head mean, and the importance ``(N, H, Q)``. Only the
    model's predictions are used, never the test responses."""
    importance = model.head_importance(x_test, reference=x_val, batch=chunk)
    maps: dict[str, list[torch.Tensor]] = {"weighted": [], "head_mean": []}
    for i in range(0, len(x_test), chunk):  # chunks: per-head maps of all test images could take gigabytes
        per_head = model.head_maps(x_test[i : i + chunk]).cpu()
        maps["weighted"].append(combine_heads(per_head, importance[i : i + chunk]))
        maps["head_mean"].append(combine_heads(per_head))
    return {"importance": importance, **{k: torch.cat(v) for k, v in maps.items()}}


def _token_matrix(cache: FeatureCache, layer: int, ids: np.ndarray) -> np.ndarray:
    return cache.tokens(layer, ids).reshape(len(ids), -1).astype(np.float32)


def _fit_ridge(encoder: str, sub: SubjectData, cache: FeatureCache, cfg: EncodingConfig) -> dict:
    alphas = np.logspace(*cfg.ridge.get("alpha_range", (-1, 7)), cfg.ridge.get("n_alphas", 17))
    folds = int(cfg.ridge.get("folds", 5))
    n_pca = int(cfg.ridge.get("pca", 512))
    if encoder == "ridge_pooled":
        inputs = {"pooled": (cache.pooled(sub.train_ids), cache.pooled(sub.test_ids))}
    else:
        inputs = {}
        for layer in cfg.layers or cache.layers:
            x, x_test = _token_matrix(cache, layer, sub.train_ids), _token_matrix(cache, layer, sub.test_ids)
            k = min(n_pca, len(x) - 1, x.shape[1])
            pca = PCA(k, random_state=0).fit(x)  # training images only
            inputs[f"layer{layer}"] = (pca.transform(x), pca.transform(x_test))
    preds, scores, state, info = [], [], {}, {"alphas": alphas.tolist(), "folds": folds, "inputs": {}}
    for name, (x, x_test) in inputs.items():
        model = RidgeCV(alphas, cv=folds).fit(x, sub.train_y)
        preds.append(model.predict(x_test))
        scores.append(model.best_score_)
        state[f"{name}.coef"] = torch.from_numpy(model.coef_.astype(np.float32))
        state[f"{name}.intercept"] = torch.from_numpy(model.intercept_.astype(np.float32))
        state[f"{name}.alpha"] = torch.from_numpy(model.alphas_.astype(np.float32))
        info["inputs"][name] = {"n_features": x.shape[1], "alphas_at_edge": model.n_at_edge_}
        log.info("%s %s: α at grid edges %s", encoder, name, model.n_at_edge_)
    best = np.argmax(np.stack(scores), axis=0)  # per voxel, the input with the best CV score (training data only)
    pred = np.take_along_axis(np.stack(preds), best[None, None, :], axis=0)[0]
    state["chosen_input"] = torch.from_numpy(best.astype(np.int64))
    info["chosen_input"] = {name: int((best == i).sum()) for i, name in enumerate(inputs)}
    return {"pred": pred, "state": state, "info": info, "attention": []}


def _write_attention(path: Path, result: dict, nsd_ids: np.ndarray, grid: tuple[int, int], config: dict) -> None:
    """Ensemble-mean test maps (as the reference, a plain mean over members), both head weightings, and the query
    each voxel reads."""
    members = result["attention"]

    def ensemble(key: str) -> np.ndarray:
        return torch.stack([m[key] for m in members]).mean(0).permute(1, 0, 2, 3).numpy().astype(np.float16)

    with atomic_h5(path, config, "cross-attention weights of the last layer (sum to 1 per map)") as f:
        f["queries"] = np.array(result["info"]["queries"], dtype="S")
        f["voxel_query"] = result["voxel_query"]
        f["voxel_query"].attrs["description"] = "(voxel,): the query each voxel reads (row of maps)"
        f["nsd_ids"] = nsd_ids
        f["maps"] = ensemble("weighted")
        f["maps"].attrs["description"] = "(query, image, gh, gw): each image's heads weighted by head_importance"
        f["maps_head_mean"] = ensemble("head_mean")
        f["maps_head_mean"].attrs["description"] = "(query, image, gh, gw): plain mean over heads (the reference's)"
        f["head_importance"] = torch.stack([m["importance"] for m in members]).numpy().astype(np.float16)
        f["head_importance"].attrs["description"] = "(member, image, head, query): mean-ablation share per image"
        f.attrs["grid"] = list(grid)


def fit_predict(
    encoder: str, sub: SubjectData, cache: FeatureCache, cfg: EncodingConfig, device: str | None = None
) -> dict[str, Any]:
    """Fit ``encoder`` to ``sub``'s training images and predict its test images: ``pred`` ``(N_test, V)``, the
    weights (``state``), what `fit_encoder` writes to ``model.json`` (``info``) and the transformer's test maps."""
    if encoder in ("transformer", "factorized"):
        return _fit_torch(encoder, sub, cache, cfg, device or default_device())
    return _fit_ridge(encoder, sub, cache, cfg)


def fit_encoder(
    responses: str | Path,
    features: str | Path,
    encoder: str,
    cfg: EncodingConfig,
    out: str | Path,
    truth: str | Path | None = None,
    device: str | None = None,
) -> Path:
    """Fit ``encoder`` for the subject of ``responses`` and write its folder ``out`` atomically."""
    if encoder not in ENCODERS:
        raise BrainattError(f"unknown encoder {encoder!r}: choose from {', '.join(ENCODERS)}")
    t0 = time.time()
    sub = load_subject(responses)
    cache = FeatureCache(features)
    result = fit_predict(encoder, sub, cache, cfg, device)
    pred = result["pred"].astype(np.float32)
    scores = voxel_scores(sub, pred, load_truth(truth, sub) if truth else None)
    config = {"encoder": encoder, "encoding": dataclasses.asdict(cfg), "features": cache.backbone}
    with atomic_path(out, directory=True) as tmp:
        save_file(result["state"], tmp / "model.safetensors")
        meta = {
            **config,
            "grid": list(cache.grid),
            "n_voxels": sub.n_voxels,
            **result["info"],
            "fit_seconds": round(time.time() - t0, 1),
        }
        (tmp / "model.json").write_text(json.dumps(meta, indent=1))
        with atomic_h5(tmp / "test_pred.h5", config, "predicted responses (z units)") as f:
            f["nsd_ids"] = sub.test_ids
            f["pred"] = pred
        if result["attention"]:
            _write_attention(tmp / "attention.h5", result, sub.test_ids, cache.grid, config)
        scores.to_csv(tmp / "voxel_scores.tsv", sep="\t", index=False, float_format="%.5g")
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
    return Path(out)
