"""The four encoders behind one protocol, their registry, and loading a fitted encoder from its folder.

Every encoder is an `Encoder`, in the style of a scikit-learn estimator: constructed from an `EncodingConfig`,
``fit(sub, cache)`` on a subject's training images (`SubjectData`) and the backbone's feature cache
(`FeatureCache`), ``predict(cache, nsd_ids)`` from cached features, ``save(folder)`` / ``Encoder.load(folder)``
for ``model.safetensors`` + ``model.json``, and ``head()``: the fitted readout as a torch module from backbone
features (``{layer: (B, gh, gw, C), "pooled": (B, D)}``, what `models.loading.Backbone` returns) to responses
``(B, V)``. ``predict`` runs the same head on cached features that `load_image_encoder` runs on live ones.

- ``transformer``: attention-routing encoder, an ensemble over cached layers × seeds;
- ``factorized``: space × feature readout, the same ensemble;
- ``ridge_pooled``: `RidgeCV` on the backbone's pooled embedding;
- ``ridge_tokens``: `RidgeCV` on the same patch tokens the transformer sees (flattened, PCA-reduced with the
  PCA fit on training images only), per layer, each voxel keeping the layer with the best CV score.

A saved folder is self-contained: weights, each voxel's query, the PCA (components and mean) of ``ridge_tokens``,
the layers, per-voxel ensemble weights or chosen input, and the backbone (its name as configured, its `ModelSpec`
with kit names resolved to a directory, and its `models.loading.weights_fingerprint`), so `load_image_encoder`
rebuilds image → voxel without the feature cache or the responses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import nn

from brainatt.contracts.encoding import read_model, read_model_info, write_model
from brainatt.contracts.features import FeatureCache
from brainatt.encoding.data import SubjectData, assign_queries, validation_split
from brainatt.encoding.factorized import FactorizedEncoder
from brainatt.encoding.ridge import RidgeCV
from brainatt.encoding.train import TrainConfig, ensemble_weights, fit
from brainatt.encoding.transformer import AttentionRoutingEncoder, combine_heads
from brainatt.io import BrainattError
from brainatt.models.loading import Backbone, default_device, load_backbone, weights_fingerprint
from brainatt.models.spec import ModelSpec

log = logging.getLogger(__name__)
Features = Mapping[int | str, torch.Tensor]


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
        """The section as a config (or a saved ``model.json``) holds it: lists become tuples; ``encoders`` (which
        encoders the workflow fits) is not a fitting setting."""
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


def _torch_module(
    encoder: str,
    arch: dict[str, Any],
    voxel_query: np.ndarray,
    n_queries: int,
    grid: tuple[int, int],
    width: int,
    content: np.ndarray,
) -> nn.Module:
    if encoder == "transformer":
        kw = {k: arch[k] for k in ARCH_KEYS["transformer"] if k in arch and k != "queries"}
        return AttentionRoutingEncoder(voxel_query, n_queries, grid, width, content_queries=content, **kw)
    return FactorizedEncoder(voxel_query, n_queries, grid, width)


def build_model(
    encoder: str, arch: dict[str, Any], sub: SubjectData, grid: tuple[int, int], width: int
) -> tuple[nn.Module, list[str]]:
    """The torch encoder for a subject, with its queries (transformer) or spatial maps (factorized), and their
    names; ``width`` is the cached tokens' width."""
    names, index = assign_queries(sub, arch.get("queries", arch.get("maps", "roi")))
    content = np.unique(index[sub.family == "category"])  # with shared (hemisphere) queries: every query
    return _torch_module(encoder, arch, index, len(names), grid, width, content), names


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
    checkpoint: Path | None = None,
    data_id: str = "",
) -> tuple[nn.Module, np.ndarray, list[dict], list[str]]:
    """One ensemble member on training tokens ``x``: seeded initialisation, trained on the fit images of ``split``
    (fit, validation indices), best epoch by validation r. Returns the model, its per-voxel validation r, the
    training history and the query names. ``settings`` is the ``encoding.<encoder>`` section. With
    ``checkpoint``, training saves its state there every epoch and resumes a state saved for the same settings,
    seed, split and ``data_id`` (what identifies the responses and tokens, see `TorchEnsemble.fit`)."""
    arch, train = split_settings(settings, encoder)
    fit_idx, val_idx = split
    torch.manual_seed(seed)
    model, queries = build_model(encoder, arch, sub, grid, x.shape[-1])
    y = torch.from_numpy(sub.train_y)
    run = dataclasses.replace(train, seed=seed)
    key = json.dumps([encoder, arch, dataclasses.asdict(run), data_id, fit_idx.tolist()], sort_keys=True)
    x_val, y_val = x[val_idx], sub.train_y[val_idx]
    model, r, history = fit(model.to(device), x[fit_idx], y[fit_idx], x_val, y_val, run, desc, True, checkpoint, key)
    return model, r, history, queries


def _file_id(path: Path) -> list[str | int]:
    """A file's identity in checkpoint keys: path, size and modification time (a rewritten file is new data)."""
    st = Path(path).stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


@torch.no_grad()
def member_maps(
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


# ----------------------------------------------------------------------------------------------------- heads


class MemberEnsemble(nn.Module):
    """Torch members, each reading one layer's tokens, combined per voxel: ŷ_v = Σ_m w_mv · ŷ_mv."""

    def __init__(self, members: list[nn.Module], layers: list[int], weights: torch.Tensor) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.layers = list(layers)
        self.register_buffer("weights", weights.float())

    def forward(self, features: Features) -> torch.Tensor:
        preds = torch.stack([m(features[layer]) for m, layer in zip(self.members, self.layers, strict=True)])
        return torch.einsum("mv,mbv->bv", self.weights, preds)


class ChosenLinear(nn.Module):
    """Linear maps from several inputs (the pooled embedding, or each layer's flattened tokens projected on its
    PCA), each voxel reading the input chosen for it: ŷ_v = ((x_i − μ_i) P_iᵀ) β_iv + b_iv with i = chosen(v).

    Tokens ``(B, gh, gw, C)`` are flattened in that order (channels fastest), as the ridge was fitted on them.
    """

    def __init__(
        self,
        keys: list[int | str],
        coef: list[torch.Tensor],
        intercept: list[torch.Tensor],
        chosen: torch.Tensor,
        pca: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        super().__init__()
        self.keys = list(keys)
        self.projected = pca is not None
        voxels = [torch.flatten(torch.nonzero(chosen == i)) for i in range(len(keys))]
        self.register_buffer("inverse", torch.argsort(torch.cat(voxels)))
        for i, cols in enumerate(voxels):  # only the columns of the voxels that read input i
            self.register_buffer(f"coef{i}", coef[i][:, cols].float().contiguous())
            self.register_buffer(f"intercept{i}", intercept[i][cols].float())
            if pca is not None:
                self.register_buffer(f"components{i}", pca[i][0].float().contiguous())
                self.register_buffer(f"mean{i}", pca[i][1].float())

    def forward(self, features: Features) -> torch.Tensor:
        parts = []
        for i, key in enumerate(self.keys):
            if not getattr(self, f"coef{i}").shape[1]:  # no voxel reads this input
                continue
            x = features[key].flatten(1).float()
            if self.projected:
                x = (x - getattr(self, f"mean{i}")) @ getattr(self, f"components{i}").T
            parts.append(x @ getattr(self, f"coef{i}") + getattr(self, f"intercept{i}"))
        return torch.cat(parts, dim=1).index_select(1, self.inverse)


class ImageEncoder(nn.Module):
    """Images ``(B, 3, H, W)`` float in [0, 1] → predicted responses ``(B, V)`` (z units): the backbone, run live
    (it resizes and normalises inside), then the fitted encoder's head. Differentiable with respect to the pixels;
    the weights are frozen and the module is in eval mode."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


# -------------------------------------------------------------------------------------------------- encoders


class Encoder(ABC):
    """What every encoder does; see the module docstring. Fitted attributes end in ``_``."""

    name: ClassVar[str]

    def __init__(self, cfg: EncodingConfig | None = None) -> None:
        self.cfg = cfg or EncodingConfig()

    @abstractmethod
    def fit(
        self, sub: SubjectData, cache: FeatureCache, device: str | None = None, checkpoints: Path | None = None
    ) -> Self:
        """Fit to ``sub``'s training images (never its test images), from ``cache``'s features; a torch encoder
        saves and resumes each member's training under the folder ``checkpoints`` (`train.fit`)."""

    @abstractmethod
    def head(self) -> nn.Module:
        """The fitted readout: backbone features ``{layer: (B, gh, gw, C), "pooled": (B, D)}`` → ``(B, V)``."""

    @abstractmethod
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The tensors of ``model.safetensors`` and this encoder's own fields of ``model.json``."""

    @abstractmethod
    def _restore(self, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        """Set the fitted attributes from what `_state` wrote."""

    @property
    @abstractmethod
    def feature_keys(self) -> list[int | str]:
        """The cached features the head reads: layers and/or ``"pooled"``."""

    def _record(self, sub: SubjectData, cache: FeatureCache) -> None:
        """Fitted attributes every encoder has: voxels, grid and the backbone the features came from."""
        self.n_voxels_ = sub.n_voxels
        self.grid_ = tuple(cache.grid)
        self.backbone_ = {
            "name": cache.backbone,
            "spec": json.loads(cache.spec.to_json()) if cache.spec is not None else None,
            "fingerprint": cache.fingerprint,
        }

    def predict(self, cache: FeatureCache, nsd_ids: np.ndarray, batch: int = 256) -> np.ndarray:
        """Predicted responses ``(N, V)`` float32 of images ``nsd_ids`` from ``cache``'s features."""
        head = self.head().eval()
        device = next(head.buffers()).device
        out = []
        with torch.no_grad():
            for i in range(0, len(nsd_ids), batch):
                ids = nsd_ids[i : i + batch]
                feats = {k: torch.from_numpy(_read(cache, k, ids)).to(device) for k in self.feature_keys}
                out.append(head(feats).cpu())
        return torch.cat(out).numpy().astype(np.float32)

    def save(self, folder: str | Path) -> None:
        """Write ``model.safetensors`` and ``model.json`` into ``folder`` (which must exist)."""
        state, own = self._state()
        info = {
            "encoder": self.name,
            "encoding": dataclasses.asdict(self.cfg),
            "features": self.backbone_["name"],
            "backbone": self.backbone_,
            "grid": list(self.grid_),
            "n_voxels": self.n_voxels_,
            "layers": [k for k in self.feature_keys if k != "pooled"],
            **own,
            "fit_seconds": self.fit_seconds_,
        }
        write_model(folder, info, {k: v.detach().cpu().numpy() for k, v in state.items()})

    @classmethod
    def load(cls, folder: str | Path) -> Self:
        """The fitted encoder saved in ``folder`` (`save`), on the CPU."""
        folder = Path(folder)
        info, arrays = read_model(folder)
        if info["encoder"] != cls.name:
            raise BrainattError(f"{folder}: holds a {info['encoder']!r} encoder, not {cls.name!r}: use load_encoder")
        encoder = cls(EncodingConfig.from_config(info["encoding"]))
        encoder.n_voxels_ = info["n_voxels"]
        encoder.grid_ = tuple(info["grid"])
        encoder.backbone_ = info["backbone"]
        encoder.fit_seconds_ = info["fit_seconds"]
        encoder._restore({k: torch.from_numpy(v) for k, v in arrays.items()}, info)
        return encoder


def _read(cache: FeatureCache, key: int | str, nsd_ids: np.ndarray) -> np.ndarray:
    return cache.pooled(nsd_ids) if key == "pooled" else cache.tokens(key, nsd_ids)


class TorchEnsemble(Encoder):
    """Torch members trained per layer × seed on cached tokens, combined per voxel with softmax(τ·r_val) weights
    (`train.ensemble_weights`) of their validation r."""

    def fit(
        self, sub: SubjectData, cache: FeatureCache, device: str | None = None, checkpoints: Path | None = None
    ) -> Self:
        t0 = time.time()
        device = device or default_device()
        settings = getattr(self.cfg, self.name)
        self.arch_, train = split_settings(settings, self.name)
        self.train_ = dataclasses.asdict(train)
        split = validation_split(len(sub.train_ids), self.cfg.val_fraction, self.cfg.split_seed)
        self.val_ids_ = sub.train_ids[split[1]]
        self.members_, self.member_info_, self.layers_, val_r = [], [], [], []
        data_id = json.dumps([_file_id(sub.path), _file_id(cache.path)])
        for layer in self.cfg.layers or cache.layers:
            x = torch.from_numpy(cache.tokens(layer, sub.train_ids))
            for seed in self.cfg.seeds:
                desc = f"{self.name} L{layer} s{seed}"
                checkpoint = Path(checkpoints) / f"L{layer}_s{seed}.pt" if checkpoints else None
                model, r, history, self.queries_ = train_member(
                    self.name, settings, sub, cache.grid, x, split, seed, device, desc, checkpoint, data_id
                )
                self.members_.append(model)
                self.layers_.append(layer)
                info = {"layer": layer, "seed": seed, "val_r": float(r.mean()), "epochs": len(history)}
                self.member_info_.append(info)
                val_r.append(r)
        self.ensemble_weights_ = ensemble_weights(np.stack(val_r), self.cfg.ensemble_temperature).astype(np.float32)
        self.voxel_query_ = model.readout.voxel_query.cpu().numpy()  # the same in every member
        self.content_queries_ = model.content_queries.cpu().numpy() if self.name == "transformer" else np.zeros(0)
        self.token_width_ = int(x.shape[-1])
        self._record(sub, cache)
        self.fit_seconds_ = round(time.time() - t0, 1)
        return self

    @property
    def feature_keys(self) -> list[int | str]:
        return list(dict.fromkeys(self.layers_))

    def head(self) -> MemberEnsemble:
        device = next(self.members_[0].parameters()).device
        return MemberEnsemble(self.members_, self.layers_, torch.from_numpy(self.ensemble_weights_).to(device))

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        state = {f"member{m}.{k}": v for m, model in enumerate(self.members_) for k, v in model.state_dict().items()}
        state["ensemble_weights"] = torch.from_numpy(self.ensemble_weights_)
        state["voxel_query"] = torch.from_numpy(self.voxel_query_.astype(np.int64))
        state["val_ids"] = torch.from_numpy(np.asarray(self.val_ids_, np.int64))
        own = {
            "arch": self.arch_,
            "train": self.train_,
            "members": self.member_info_,
            "queries": self.queries_,
            "content_queries": [int(q) for q in self.content_queries_],
            "token_width": self.token_width_,
        }
        return state, own

    def _restore(self, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        self.arch_, self.train_ = info["arch"], info["train"]
        self.member_info_, self.queries_ = info["members"], info["queries"]
        self.layers_ = [m["layer"] for m in self.member_info_]
        self.ensemble_weights_ = state["ensemble_weights"].numpy()
        self.voxel_query_ = state["voxel_query"].numpy()
        self.val_ids_ = state["val_ids"].numpy()
        self.content_queries_ = np.asarray(info["content_queries"], np.int64)
        self.token_width_ = info["token_width"]
        self.members_ = []
        for m in range(len(self.member_info_)):
            model = _torch_module(
                self.name,
                self.arch_,
                self.voxel_query_,
                len(self.queries_),
                self.grid_,
                self.token_width_,
                self.content_queries_,
            )
            prefix = f"member{m}."
            model.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
            self.members_.append(model.eval())


class TransformerEncoder(TorchEnsemble):
    """The attention-routing encoder (`transformer.AttentionRoutingEncoder`) as a layer × seed ensemble."""

    name = "transformer"

    def attention_maps(self, cache: FeatureCache, nsd_ids: np.ndarray) -> list[dict[str, torch.Tensor]]:
        """Each member's `member_maps` of images ``nsd_ids``, heads ablated to their mean over the validation
        images the fit held out."""
        out = []
        for model, layer in zip(self.members_, self.layers_, strict=True):
            x = torch.from_numpy(cache.tokens(layer, nsd_ids))
            out.append(member_maps(model, x, torch.from_numpy(cache.tokens(layer, self.val_ids_))))
        return out


class FactorizedReadout(TorchEnsemble):
    """The space × feature readout (`factorized.FactorizedEncoder`) as a layer × seed ensemble."""

    name = "factorized"


class RidgeEncoder(Encoder):
    """`RidgeCV` per input (per-voxel α by K-fold CV on the training images), each voxel keeping the input with
    the best CV score. A closed-form fit: it keeps no checkpoints."""

    @abstractmethod
    def _inputs(self, sub: SubjectData, cache: FeatureCache) -> dict[str, tuple[int | str, np.ndarray]]:
        """Input name → (feature key, training design matrix); a PCA fitted here goes into ``pca_``."""

    def fit(
        self, sub: SubjectData, cache: FeatureCache, device: str | None = None, checkpoints: Path | None = None
    ) -> Self:
        t0 = time.time()
        ridge = self.cfg.ridge
        alphas = np.logspace(*ridge.get("alpha_range", (-1, 7)), ridge.get("n_alphas", 17))
        self.alpha_grid_, self.folds_ = alphas, int(ridge.get("folds", 5))
        self.pca_: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        inputs = self._inputs(sub, cache)
        self.inputs_ = list(inputs)
        self.keys_ = [key for key, _ in inputs.values()]
        self.coef_, self.intercept_, self.alpha_, self.input_info_, scores = {}, {}, {}, {}, []
        for name, (_, x) in inputs.items():
            model = RidgeCV(alphas, cv=self.folds_).fit(x, sub.train_y)
            scores.append(model.best_score_)
            self.coef_[name] = model.coef_.astype(np.float32)
            self.intercept_[name] = model.intercept_.astype(np.float32)
            self.alpha_[name] = model.alphas_.astype(np.float32)
            self.input_info_[name] = {"n_features": x.shape[1], "alphas_at_edge": model.n_at_edge_}
            log.info("%s %s: α at grid edges %s", self.name, name, model.n_at_edge_)
        self.chosen_input_ = np.argmax(np.stack(scores), axis=0)  # per voxel, best CV score (training data only)
        self._record(sub, cache)
        self.fit_seconds_ = round(time.time() - t0, 1)
        return self

    @property
    def feature_keys(self) -> list[int | str]:
        return list(self.keys_)

    def head(self) -> ChosenLinear:
        pca = [tuple(torch.from_numpy(a) for a in self.pca_[n]) for n in self.inputs_] if self.pca_ else None
        return ChosenLinear(
            self.keys_,
            [torch.from_numpy(self.coef_[n]) for n in self.inputs_],
            [torch.from_numpy(self.intercept_[n]) for n in self.inputs_],
            torch.from_numpy(self.chosen_input_),
            pca,
        )

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        state = {}
        for name in self.inputs_:
            state[f"{name}.coef"] = torch.from_numpy(self.coef_[name])
            state[f"{name}.intercept"] = torch.from_numpy(self.intercept_[name])
            state[f"{name}.alpha"] = torch.from_numpy(self.alpha_[name])
            if name in self.pca_:
                state[f"{name}.pca_components"] = torch.from_numpy(self.pca_[name][0])
                state[f"{name}.pca_mean"] = torch.from_numpy(self.pca_[name][1])
        state["chosen_input"] = torch.from_numpy(self.chosen_input_.astype(np.int64))
        own = {
            "alphas": self.alpha_grid_.tolist(),
            "folds": self.folds_,
            "inputs": self.input_info_,
            "input_keys": self.keys_,
            "chosen_input": {name: int((self.chosen_input_ == i).sum()) for i, name in enumerate(self.inputs_)},
        }
        return state, own

    def _restore(self, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        self.alpha_grid_, self.folds_ = np.asarray(info["alphas"]), info["folds"]
        self.input_info_, self.keys_ = info["inputs"], info["input_keys"]
        self.inputs_ = list(self.input_info_)
        self.coef_ = {n: state[f"{n}.coef"].numpy() for n in self.inputs_}
        self.intercept_ = {n: state[f"{n}.intercept"].numpy() for n in self.inputs_}
        self.alpha_ = {n: state[f"{n}.alpha"].numpy() for n in self.inputs_}
        self.pca_ = {
            n: (state[f"{n}.pca_components"].numpy(), state[f"{n}.pca_mean"].numpy())
            for n in self.inputs_
            if f"{n}.pca_components" in state
        }
        self.chosen_input_ = state["chosen_input"].numpy()


class RidgePooled(RidgeEncoder):
    """Ridge on the backbone's pooled embedding."""

    name = "ridge_pooled"

    def _inputs(self, sub: SubjectData, cache: FeatureCache) -> dict[str, tuple[int | str, np.ndarray]]:
        return {"pooled": ("pooled", cache.pooled(sub.train_ids))}


class RidgeTokens(RidgeEncoder):
    """Ridge per layer on the flattened patch tokens projected on their first ``ridge.pca`` principal components
    (PCA fit on the training images only)."""

    name = "ridge_tokens"

    def _inputs(self, sub: SubjectData, cache: FeatureCache) -> dict[str, tuple[int | str, np.ndarray]]:
        n_pca = int(self.cfg.ridge.get("pca", 512))
        inputs = {}
        for layer in self.cfg.layers or cache.layers:
            x = cache.tokens(layer, sub.train_ids).reshape(len(sub.train_ids), -1).astype(np.float32)
            pca = PCA(min(n_pca, len(x) - 1, x.shape[1]), random_state=0).fit(x)  # training images only
            self.pca_[f"layer{layer}"] = (pca.components_.astype(np.float32), pca.mean_.astype(np.float32))
            inputs[f"layer{layer}"] = (layer, pca.transform(x))
        return inputs


ENCODERS: dict[str, type[Encoder]] = {
    cls.name: cls for cls in (TransformerEncoder, FactorizedReadout, RidgePooled, RidgeTokens)
}
"""The encoders by the names the config's ``encoding.encoders`` uses."""


def encoder_class(name: str) -> type[Encoder]:
    """The registered encoder called ``name`` (a clear error for an unknown one)."""
    if name not in ENCODERS:
        raise BrainattError(f"unknown encoder {name!r}: choose from {', '.join(ENCODERS)}")
    return ENCODERS[name]


def load_encoder(folder: str | Path) -> Encoder:
    """The fitted encoder in ``folder`` (``results/encoding/{subject}/{encoder}/``), whichever kind it is; its
    ``predict(cache, nsd_ids)`` reads features from a feature cache of the same backbone."""
    return encoder_class(read_model_info(folder)["encoder"]).load(folder)


def _backbone_spec(folder: Path, record: dict[str, Any]) -> ModelSpec:
    """The recorded backbone's `ModelSpec`; when it names a local directory that is gone, the name as configured
    (e.g. ``kit:clip``, resolved by the current kit) instead, left to the fingerprint check to verify."""
    if not record.get("spec") or not record.get("fingerprint"):
        raise BrainattError(
            f"{folder}: the encoder records no backbone (its feature cache predates it): rerun the features and "
            "encode rules"
        )
    spec = ModelSpec.from_json(json.dumps(record["spec"]))
    if Path(spec.name).is_absolute() and not Path(spec.name).exists():
        log.warning("%s: backbone directory %s is gone; loading %s instead", folder, spec.name, record["name"])
        spec = dataclasses.replace(spec, name=record["name"])
    return spec


def load_image_encoder(folder: str | Path, device: str = "cpu", kit_dir: str | Path | None = None) -> ImageEncoder:
    """The fitted encoder in ``folder`` as a differentiable module, images ``(B, 3, H, W)`` float in [0, 1] →
    predicted responses ``(B, V)``, running its backbone live (`models.loading.load_backbone`). ``kit_dir`` is
    where a ``kit:`` name resolves if the recorded backbone directory is gone (default: ``$BRAINATT_KIT`` or the
    shipped kit).

    The backbone's weights must be the ones the feature cache was computed with (`weights_fingerprint`), else a
    `BrainattError`. Cached tokens are float16; live ones are float32, so predictions differ from the cached path
    by the effect of that rounding.
    """
    folder = Path(folder)
    encoder = load_encoder(folder)
    spec = _backbone_spec(folder, encoder.backbone_)
    backbone = load_backbone(spec, device=device, kit_dir=kit_dir)
    found, want = weights_fingerprint(backbone), encoder.backbone_["fingerprint"]
    if found != want:
        raise BrainattError(
            f"{folder}: backbone {spec.name} has weights {found}, but the encoder was fitted on features of weights "
            f"{want}: restore those weights, or rerun the features and encode rules with this backbone"
        )
    missing = set(encoder.feature_keys) - set(backbone.layers) - {"pooled"}
    if missing:
        raise BrainattError(f"{folder}: backbone {spec.name} exposes layers {backbone.layers}, not {sorted(missing)}")
    return ImageEncoder(backbone, encoder.head()).to(device)
