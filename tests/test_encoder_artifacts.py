"""Fitted encoders as saved folders, on a tiny nsd-synth world with the shipped kit's CLIP as backbone: each of the
four reloads from its folder alone, predicts its written test predictions from cached features, and runs from
images through the live backbone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from brainatt.contracts.encoding import open_attention, read_test_predictions, read_voxel_scores
from brainatt.contracts.features import FeatureCache
from brainatt.encoding.encoders import (
    ENCODERS,
    ChosenLinear,
    EncodingConfig,
    encoder_class,
    load_encoder,
    load_image_encoder,
)
from brainatt.encoding.fit import fit_encoder
from brainatt.encoding.train import predict
from brainatt.features.cache import extract_features
from brainatt.images import images_to_tensor
from brainatt.io import BrainattError, read_by_nsd_id
from brainatt.models.loading import ModelSpec
from brainatt.nsd.layout import NSDLayout
from brainatt.prep.responses import preprocess_subject
from brainatt.prep.stimuli import write_stimuli

ATLASES = ["prf-visualrois", "floc-faces", "nsdgeneral"]
CFG = EncodingConfig(
    transformer={"epochs": 2, "heads": 4, "ff": 32},
    factorized={"epochs": 2},
    ridge={"folds": 3, "pca": 8, "n_alphas": 5},
)
# Live tokens are float32, cached ones float16 (11 significant bits: relative rounding ≤ 2⁻¹¹ ≈ 5e-4 of each
# token value, tokens being layer-normalised, O(1)). The readouts sum many tokens, so the rounding errors partly
# cancel: the largest seen is 2e-4 on predictions of SD ≈ 0.3. LIVE_ATOL leaves 5× room.
LIVE_ATOL = 1e-3


@pytest.fixture(scope="module")
def world(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """subj01's responses, the images, a two-layer feature cache and a folder per fitted encoder."""
    d = tmp_path_factory.mktemp("artifacts")
    layout = NSDLayout(tiny_world)
    responses = preprocess_subject(layout, "subj01", d / "responses.h5", ["nsdgeneral"], ATLASES)
    images = write_stimuli(layout, ["subj01"], d / "images.h5")
    spec = ModelSpec(role="backbone", name="kit:clip", layers=(-1, -2))
    features = extract_features(images, spec, d / "features.h5", device="cpu")
    paths = {"responses": responses, "images": images, "features": features}
    for name in ENCODERS:
        paths[name] = fit_encoder(responses, features, name, CFG, d / "encoding" / name, device="cpu")
    return paths


def _written(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(folder / "test_pred.h5") as f:
        return f["nsd_ids"][()], f["pred"][()]


def _images(world: dict[str, Path], nsd_ids: np.ndarray) -> torch.Tensor:
    images = read_by_nsd_id(world["images"], "images", nsd_ids, "the stimuli", "rerun the stimuli rule")
    return images_to_tensor(images)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_saved_encoder_predicts_its_test_predictions_from_cached_features(world: dict[str, Path], name: str) -> None:
    folder = world[name]
    encoder = load_encoder(folder)
    assert type(encoder) is ENCODERS[name] and encoder.n_voxels_ == _written(folder)[1].shape[1]
    ids, written = _written(folder)
    np.testing.assert_allclose(encoder.predict(FeatureCache(world["features"]), ids), written, rtol=0, atol=1e-5)
    info = json.loads((folder / "model.json").read_text())
    assert info["backbone"]["name"] == "kit:clip" and info["backbone"]["fingerprint"]
    assert Path(info["backbone"]["spec"]["name"]).is_dir()  # the kit name resolved to its directory
    state = load_file(folder / "model.safetensors")
    if name == "ridge_tokens":
        assert info["layers"] == [-1, -2]
        for layer in (-1, -2):
            assert state[f"layer{layer}.pca_components"].shape == (8, 8 * 8 * 128)
            assert state[f"layer{layer}.pca_mean"].dtype == torch.float32
    if name in ("transformer", "factorized"):
        assert [m["layer"] for m in info["members"]] == [-1, -2]
        assert state["ensemble_weights"].shape == (2, info["n_voxels"])
        assert state["voxel_query"].shape == (info["n_voxels"],)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_image_encoder_reproduces_test_predictions_from_pixels(world: dict[str, Path], name: str) -> None:
    ids, written = _written(world[name])
    module = load_image_encoder(world[name])
    x = _images(world, ids)
    with torch.no_grad():
        features = module.backbone(x)
        np.testing.assert_allclose(module(x).numpy(), written, rtol=0, atol=LIVE_ATOL)
        # Rounded as the cache rounds them, live tokens give the cached path's predictions up to float32 noise.
        rounded = {k: v if k == "pooled" else v.half() for k, v in features.items()}
        np.testing.assert_allclose(module.head(rounded).numpy(), written, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_image_encoder_is_differentiable_in_the_pixels(world: dict[str, Path], name: str) -> None:
    module = load_image_encoder(world[name])
    x = _images(world, _written(world[name])[0][:2]).requires_grad_(True)
    module(x)[:, :5].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def _copy(folder: Path, tmp_path: Path, edit) -> Path:
    out = tmp_path / folder.name
    shutil.copytree(folder, out)
    info = json.loads((out / "model.json").read_text())
    edit(info)
    (out / "model.json").write_text(json.dumps(info))
    return out


def test_a_backbone_with_other_weights_is_refused(world: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(world["ridge_pooled"], tmp_path, lambda info: info["backbone"].update(fingerprint="0" * 16))
    with pytest.raises(BrainattError, match="rerun the features and encode rules") as err:
        load_image_encoder(folder)
    assert str(folder) in str(err.value)


def test_a_moved_backbone_directory_falls_back_to_the_configured_name(world: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(world["ridge_pooled"], tmp_path, lambda info: info["backbone"]["spec"].update(name="/gone/clip"))
    ids, written = _written(folder)
    with torch.no_grad():
        live = load_image_encoder(folder)(_images(world, ids)).numpy()
    np.testing.assert_allclose(live, written, rtol=0, atol=LIVE_ATOL)


def test_folders_without_a_self_contained_model_are_refused(world: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(BrainattError, match="no fitted encoder here"):
        load_encoder(tmp_path)
    folder = _copy(world["factorized"], tmp_path, lambda info: info.pop("format"))
    with pytest.raises(BrainattError, match="rerun the encode rule"):
        load_encoder(folder)
    folder = _copy(world["factorized"], tmp_path / "other", lambda info: info.update(encoder="ridge_pooled"))
    with pytest.raises(BrainattError, match="not 'transformer'"):
        ENCODERS["transformer"].load(folder)


def _drop(name: str, key: str):
    def damage(folder: Path) -> None:
        with h5py.File(folder / name, "r+") as f:
            del f[key]

    return damage


def _truncate(name: str):
    def damage(folder: Path) -> None:
        (folder / name).write_bytes((folder / name).read_bytes()[:100])

    return damage


def _drop_column(column: str):
    def damage(folder: Path) -> None:
        scores = pd.read_csv(folder / "voxel_scores.tsv", sep="\t")
        scores.drop(columns=column).to_csv(folder / "voxel_scores.tsv", sep="\t", index=False)

    return damage


@pytest.mark.parametrize(
    ("damage", "read", "message"),
    [
        (_drop("test_pred.h5", "pred"), lambda d: read_test_predictions(d / "test_pred.h5"), "no 'pred'"),
        (_truncate("test_pred.h5"), lambda d: read_test_predictions(d / "test_pred.h5"), "not a readable HDF5"),
        (_drop("attention.h5", "nsd_ids"), lambda d: open_attention(d / "attention.h5").__enter__(), "no 'nsd_ids'"),
        (_drop_column("r"), lambda d: read_voxel_scores(d / "voxel_scores.tsv"), "no column 'r'"),
        (_truncate("model.safetensors"), load_encoder, "cannot be read"),
    ],
)
def test_damaged_files_stop_with_one_line_naming_them(
    world: dict[str, Path], tmp_path: Path, damage, read, message: str
) -> None:
    folder = tmp_path / "transformer"
    shutil.copytree(world["transformer"], folder)
    damage(folder)
    with pytest.raises(BrainattError, match=message) as err:
        read(folder)
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_heads_combine_what_was_fitted(world: dict[str, Path]) -> None:
    """The written predictions, recomputed from the saved arrays without the heads: ridge per layer on the PCA
    projection, each voxel's chosen layer; torch members each alone, weighted per voxel."""
    cache = FeatureCache(world["features"])
    ids, written = _written(world["ridge_tokens"])
    state = load_file(world["ridge_tokens"] / "model.safetensors")
    per_layer = []
    for layer in (-1, -2):
        x = cache.tokens(layer, ids).reshape(len(ids), -1).astype(np.float64)
        projected = (x - state[f"layer{layer}.pca_mean"].numpy()) @ state[f"layer{layer}.pca_components"].numpy().T
        per_layer.append(projected @ state[f"layer{layer}.coef"].numpy() + state[f"layer{layer}.intercept"].numpy())
    chosen = state["chosen_input"].numpy()
    expected = np.take_along_axis(np.stack(per_layer), chosen[None, None], axis=0)[0]
    np.testing.assert_allclose(written, expected, rtol=0, atol=1e-4)
    encoder = load_encoder(world["transformer"])
    members = [
        predict(m, torch.from_numpy(cache.tokens(layer, ids)))
        for m, layer in zip(encoder.members_, encoder.layers_, strict=True)
    ]
    expected = np.einsum("mv,mnv->nv", encoder.ensemble_weights_, np.stack(members))
    np.testing.assert_allclose(_written(world["transformer"])[1], expected, rtol=0, atol=1e-5)


def test_unknown_encoders_are_named_with_the_choices() -> None:
    with pytest.raises(BrainattError, match="unknown encoder 'ridge': choose from transformer, factorized"):
        encoder_class("ridge")


@pytest.mark.parametrize("chosen", [[0, 1, 1, 0, 1], [1, 1, 1, 1, 1]])  # the second leaves input 0 unread
def test_each_voxel_reads_its_chosen_input(chosen: list[int]) -> None:
    torch.manual_seed(0)
    features = {-1: torch.randn(3, 2, 2, 4), -2: torch.randn(3, 2, 2, 4)}
    coef, intercept = [torch.randn(3, 5) for _ in range(2)], [torch.randn(5) for _ in range(2)]
    pca = [(torch.randn(3, 16), torch.randn(16)) for _ in range(2)]
    head = ChosenLinear([-1, -2], coef, intercept, torch.tensor(chosen), pca)
    inputs = zip((-1, -2), pca, coef, intercept, strict=True)
    every = [((features[key].flatten(1) - mean) @ p.T) @ b + a for key, (p, mean), b, a in inputs]
    expected = torch.stack(every).gather(0, torch.tensor(chosen).expand(1, 3, 5))[0]
    torch.testing.assert_close(head(features), expected)
