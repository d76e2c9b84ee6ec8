"""The torch encoders against a toy token world whose routing is known (research digest §6).

Tokens on a 6×6 grid are noise plus, in each image, one "object" token (a fixed direction) at a random place.
Category voxels respond to the object's strength wherever it is; retinotopic voxels to one feature at one fixed
patch. A routing encoder must attend to the object for the first; a static spatial readout can only serve the
second. With two kinds of object (two directions), each image holds one of them and both drive the category voxels.
(A single-patch receptive field is a hard case for one ROI query: its sine-coded keys give broad
attention bumps at this width, and it learns it slowly; nsd-synth's smoother pRFs are scored in routing.tsv.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from brainatt.encoding.encoders import MemberEnsemble, member_maps
from brainatt.encoding.factorized import FactorizedEncoder
from brainatt.encoding.readout import VoxelReadout
from brainatt.encoding.ridge import RidgeCV
from brainatt.encoding.train import (
    TrainConfig,
    ensemble_weights,
    fit,
    predict,
    stage_inputs,
)
from brainatt.encoding.transformer import AttentionRoutingEncoder, attention_entropy, combine_heads, sine_positions
from brainatt.io import BrainattError
from brainatt.metrics import pearson_r

GRID, WIDTH = (6, 6), 32
RETINO_PATCH = (1, 4)


def toy_world(n: int, seed: int, kinds: int = 1) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    assert kinds in (1, 2)
    rng = np.random.default_rng(seed)
    tokens = rng.normal(0, 1, (n, *GRID, WIDTH)).astype(np.float32)
    obj = np.zeros(WIDTH, np.float32)
    obj[:8] = 2.0
    where = rng.integers(0, GRID[0] * GRID[1], n)
    strength = rng.uniform(0.5, 2.0, n).astype(np.float32)
    flat = tokens.reshape(n, -1, WIDTH)
    flat[np.arange(n), where] += strength[:, None] * obj
    category = strength[:, None] * rng.uniform(0.8, 1.2, 20)  # 20 category voxels
    retino = tokens[:, RETINO_PATCH[0], RETINO_PATCH[1], 8:9] * rng.uniform(0.8, 1.2, 20)  # 20 retinotopic voxels
    clean = np.concatenate([category, retino], axis=1)
    noisy = clean + rng.normal(0, 0.3, clean.shape)
    if kinds == 2:  # half the images hold the other kind: the same strength along another direction
        other = np.flatnonzero(rng.random(n) < 0.5)
        flat[other, where[other]] += strength[other, None] * (np.roll(obj, 16) - obj)
    return torch.from_numpy(tokens).half(), noisy.astype(np.float32), clean, where


VOXEL_QUERY = np.repeat([0, 1], 20)


def train_on_toy_world(heads: int, kinds: int = 1) -> AttentionRoutingEncoder:
    """A transformer with ``heads`` heads fitted to the toy world (seed 0) holding ``kinds`` kinds of object."""
    torch.manual_seed(0)
    x, y, _, _ = toy_world(900, 0, kinds)
    x_val, y_val, _, _ = toy_world(200, 1, kinds)
    model = AttentionRoutingEncoder(VOXEL_QUERY, 2, GRID, WIDTH, heads=heads, ff=64, dropout=0.0)
    cfg = TrainConfig(epochs=30, batch=32, lr=3e-3, patience=30, lr_drop=15)
    model, _, _ = fit(model, x, torch.from_numpy(y), x_val, y_val, cfg)
    return model


@pytest.fixture(scope="module")
def trained() -> tuple[AttentionRoutingEncoder, torch.Tensor, np.ndarray, np.ndarray]:
    model = train_on_toy_world(heads=1)
    x_test, _, clean, where = toy_world(300, 2)
    return model, x_test, clean, where


def test_transformer_attention_follows_the_object(trained) -> None:
    model, x_test, _, where = trained
    maps = model.attention(x_test).flatten(2).numpy()  # (N, Q, 36)
    assert np.allclose(maps.sum(-1), 1, atol=1e-5)
    uniform = 1 / maps.shape[-1]
    object_mass = maps[np.arange(len(where)), 0, where].mean()
    assert object_mass >= 3 * uniform, f"category query puts {object_mass:.3f} on the object (uniform {uniform:.3f})"


def test_transformer_beats_flattened_ridge_on_position_tolerant_voxels(trained) -> None:
    model, x_test, clean, _ = trained
    x, y, _, _ = toy_world(900, 0)
    ridge = RidgeCV(np.logspace(-1, 5, 13), cv=5).fit(x.flatten(1).float().numpy(), y)
    r_ridge = pearson_r(clean, ridge.predict(x_test.flatten(1).float().numpy()))
    r_model = pearson_r(clean, predict(model, x_test))
    assert r_model[:20].mean() > r_ridge[:20].mean() + 0.1, (r_model[:20].mean(), r_ridge[:20].mean())


def test_static_spatial_readout_cannot_follow_a_moving_object() -> None:
    torch.manual_seed(0)
    x, y, _, _ = toy_world(900, 0)
    x_val, y_val, _, _ = toy_world(200, 1)
    model = FactorizedEncoder(np.arange(40), 40, GRID, WIDTH)
    model, _, _ = fit(model, x, torch.from_numpy(y), x_val, y_val, TrainConfig(epochs=30, lr=1e-2, patience=30))
    x_test, _, clean, _ = toy_world(300, 2)
    r = pearson_r(clean, predict(model, x_test))
    assert r[20:].mean() > 0.8  # a fixed receptive field is what it can learn
    assert r[:20].mean() < 0.6  # a randomly placed object it cannot
    maps = model.spatial_maps().detach().flatten(1).numpy()
    assert np.allclose(maps.sum(1), 1, atol=1e-5)
    assert (maps[20:].argmax(1) == RETINO_PATCH[0] * GRID[1] + RETINO_PATCH[1]).all()


def test_grouped_readout_equals_per_voxel_dot_products() -> None:
    rng = np.random.default_rng(0)
    voxel_query = rng.integers(0, 5, 300)
    grouped = VoxelReadout(voxel_query, 16)
    assert grouped.grouped
    z = torch.randn(4, 5, 16)
    expected = (z[:, torch.as_tensor(voxel_query)] * grouped.weight).sum(-1) + grouped.bias
    torch.testing.assert_close(grouped(z), expected)
    per_voxel = VoxelReadout(np.arange(6), 16)
    assert not per_voxel.grouped and per_voxel.own_queries
    z = torch.randn(4, 6, 16)
    torch.testing.assert_close(per_voxel(z), (z * per_voxel.weight).sum(-1) + per_voxel.bias)
    shared = rng.integers(0, 30, 40)  # many queries, some read by several voxels (retinotopic-voxel mode)
    mixed = VoxelReadout(shared, 16)
    assert not mixed.grouped and not mixed.own_queries
    z = torch.randn(4, 30, 16)
    torch.testing.assert_close(mixed(z), (z[:, torch.as_tensor(shared)] * mixed.weight).sum(-1) + mixed.bias)


@pytest.mark.parametrize("grid", [(2, 3), (6, 6)])  # fewer tokens than the 16 channels (read first), or more
@pytest.mark.parametrize("voxel_map", [np.arange(40), np.random.default_rng(0).integers(0, 30, 40)])
def test_factorized_with_many_maps_equals_pooling_then_reading(voxel_map: np.ndarray, grid: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = FactorizedEncoder(voxel_map, int(voxel_map.max()) + 1, grid, 16)
    assert not model.readout.grouped
    with torch.no_grad():
        model.logits.normal_()
        model.readout.bias.normal_()
    x = torch.randn(6, *grid, 16).half()
    pooled = torch.einsum("ms,bsc->bmc", torch.softmax(model.logits, 1), x.flatten(1, 2).float())
    expected = (pooled[:, voxel_map] * model.readout.weight).sum(-1) + model.readout.bias
    reads, readout = [], model.readout.forward
    model.readout.forward = lambda z: reads.append(z) or readout(z)
    out = model(x)
    torch.testing.assert_close(out, expected)
    assert bool(reads) == (grid[0] * grid[1] >= 16)  # only pooling first goes through the readout
    params = [model.logits, model.readout.weight]
    grads = [torch.autograd.grad(y.square().sum(), params) for y in (out, expected)]
    torch.testing.assert_close(grads[0], grads[1])


def test_positions_are_added_to_keys_only() -> None:
    pos = sine_positions(GRID, WIDTH)
    assert pos.shape == (36, WIDTH)
    assert len(torch.unique(pos, dim=0)) == 36
    model = AttentionRoutingEncoder(VOXEL_QUERY, 2, GRID, WIDTH, heads=4, dropout=0.0).eval()
    # Identical tokens everywhere: attention may prefer places, but every value is the same, so the output must
    # not depend on where attention goes. With positions added to the values it would.
    same = torch.randn(1, 1, 1, WIDTH).expand(2, *GRID, WIDTH).clone()
    with torch.no_grad():
        out = model(same)
        model.pos.copy_(torch.randn_like(model.pos))
        torch.testing.assert_close(model(same), out)


def test_without_positions_the_encoder_cannot_tell_where_a_token_is() -> None:
    x = torch.randn(3, *GRID, WIDTH)
    shuffled = x.flatten(1, 2)[:, torch.randperm(GRID[0] * GRID[1])].unflatten(1, GRID)
    for positions in (True, False):
        torch.manual_seed(0)
        model = AttentionRoutingEncoder(VOXEL_QUERY, 2, GRID, WIDTH, heads=4, dropout=0.0, positions=positions).eval()
        with torch.no_grad():
            moved = (model(shuffled) - model(x)).abs().max().item()
        assert (moved > 1e-3) if positions else (moved < 1e-5), (positions, moved)


def test_attention_entropy_is_log_n_for_uniform_maps_and_zero_for_one_hot() -> None:
    uniform = torch.full((2, 3, 36), 1 / 36)
    torch.testing.assert_close(attention_entropy(uniform), torch.tensor(np.log(36), dtype=torch.float32))
    torch.testing.assert_close(attention_entropy(torch.eye(36)[None]), torch.tensor(0.0))


def test_forward_returns_the_maps_that_attention_reports() -> None:
    torch.manual_seed(0)
    model = AttentionRoutingEncoder(VOXEL_QUERY, 2, GRID, WIDTH, heads=4).eval()
    x = toy_world(5, 0)[0]
    pred, maps = model(x, return_attention=True)
    torch.testing.assert_close(pred, model(x))
    torch.testing.assert_close(maps.unflatten(-1, GRID), model.attention(x))


@pytest.mark.parametrize("depth", [1, 2])  # with 2 layers, the last layer's heads are the ones weighed
def test_head_importance_gives_no_weight_to_a_head_that_sends_nothing(depth: int) -> None:
    torch.manual_seed(0)
    # a third query without voxels: nothing to explain, so its heads share the weight equally
    model = AttentionRoutingEncoder(VOXEL_QUERY, 3, GRID, WIDTH, depth=depth, heads=2, dropout=0.0).eval()
    x = toy_world(50, 0)[0]
    with torch.no_grad():
        model.layers[-1].out.weight[:, WIDTH // 2 :] = 0  # head 1's output never reaches the voxels
    importance = model.head_importance(x, batch=16)
    torch.testing.assert_close(importance, torch.tensor([[1.0, 1.0, 0.5], [0.0, 0.0, 0.5]]).expand(50, 2, 3))
    torch.testing.assert_close(model.attention(x, importance)[:, :2], model.head_maps(x)[:, 0, :2])
    torch.testing.assert_close(model.attention(x, torch.full((2, 3), 0.5)), model.attention(x))
    model.train()
    model.head_importance(x)
    assert model.training  # the analysis runs without dropout and leaves the mode as it was


def test_head_importance_is_per_image_and_does_not_depend_on_chunks_or_company() -> None:
    torch.manual_seed(0)
    model = AttentionRoutingEncoder(VOXEL_QUERY, 2, GRID, WIDTH, heads=4)
    x, x_ref = toy_world(20, 0)[0], toy_world(30, 1)[0]
    importance = model.head_importance(x, reference=x_ref)
    assert not torch.allclose(importance[0], importance[1], atol=1e-3)  # each image its own weights
    torch.testing.assert_close(model.head_importance(x, reference=x_ref, batch=7), importance)
    # With a fixed reference an image's weights do not depend on the other images scored beside it.
    torch.testing.assert_close(model.head_importance(x[3:4], reference=x_ref), importance[3:4])
    chunked, whole = member_maps(model, x, x_ref, chunk=7), member_maps(model, x, x_ref)
    for key in whole:
        torch.testing.assert_close(chunked[key], whole[key])
    torch.testing.assert_close(whole["weighted"], model.attention(x, importance))


def test_combine_heads_weighs_each_image_or_all_images_alike() -> None:
    maps, per_image, all_images = torch.rand(3, 4, 2, 6, 6), torch.rand(3, 4, 2), torch.rand(4, 2)
    torch.testing.assert_close(combine_heads(maps, per_image), torch.einsum("bhqxy,bhq->bqxy", maps, per_image))
    flat = maps.flatten(3)
    torch.testing.assert_close(combine_heads(flat, all_images), torch.einsum("bhqn,hq->bqn", flat, all_images))
    with pytest.raises(ValueError, match="do not fit"):
        combine_heads(maps, all_images.T)
    with pytest.raises(ValueError, match="do not fit"):
        combine_heads(maps, per_image[:2])


def _on_object(maps: torch.Tensor, where: np.ndarray) -> float:
    """The category query's mean attention on the object's token, in multiples of uniform."""
    flat = maps.flatten(2).numpy()
    return float(flat[np.arange(len(where)), 0, where].mean() * flat.shape[-1])


def test_weighting_heads_by_importance_sharpens_routing_onto_the_object() -> None:
    model = train_on_toy_world(heads=4)
    x_test, _, _, where = toy_world(300, 2)
    on_object = {
        name: _on_object(model.attention(x_test, weights), where)
        for name, weights in (("head mean", None), ("importance", model.head_importance(x_test)))
    }
    # seeds 0-5: 4.9-8.4× uniform with heads averaged, 16-18× weighted by importance
    assert on_object["importance"] > 2 * on_object["head mean"], on_object


def test_head_importance_per_image_follows_what_the_image_holds() -> None:
    # Two kinds of object drive the same voxels. Where heads split the kinds between them, one weighting for all
    # images gives each image's map a share of a head that finds nothing in it.
    model = train_on_toy_world(heads=4, kinds=2)
    x_test, _, _, where = toy_world(300, 2, kinds=2)
    importance = model.head_importance(x_test)
    on_object = {
        name: _on_object(model.attention(x_test, weights), where)
        for name, weights in (("all images", importance.mean(0)), ("per image", importance))
    }
    # seeds 0-5: 1.17-1.52× (10-13× uniform weighted for all images, 15-17× per image); with one kind of object
    # the two weightings agree within 1%
    assert on_object["per image"] > 1.1 * on_object["all images"], on_object


def test_entropy_prior_sharpens_the_content_query_maps() -> None:
    x, y, _, _ = toy_world(300, 0)
    x_val, y_val, _, _ = toy_world(100, 1)
    entropy = {}
    for weight in (0.0, 0.3):
        torch.manual_seed(0)
        model = AttentionRoutingEncoder(VOXEL_QUERY, 2, GRID, WIDTH, heads=2, dropout=0.0, content_queries=[0])
        cfg = TrainConfig(epochs=6, lr=3e-3, attention_entropy=weight, entropy_start=0)
        model, _, _ = fit(model, x, torch.from_numpy(y), x_val, y_val, cfg)
        entropy[weight] = attention_entropy(model.attention(x_val)[:, 0].flatten(1)).item()
    assert entropy[0.3] < entropy[0.0] - 0.1, entropy


def test_early_stopping_selects_only_epochs_trained_with_the_prior() -> None:
    x, y, _, _ = toy_world(300, 0)
    x_val, y_val, _, _ = toy_world(100, 1)
    torch.manual_seed(0)
    model = AttentionRoutingEncoder(VOXEL_QUERY, 2, GRID, WIDTH, heads=2, content_queries=[0])
    cfg = TrainConfig(epochs=5, lr=3e-3, patience=5, attention_entropy=0.1, entropy_start=3)
    # Validation targets anti-correlated with training: val r falls as the model learns, so plain early stopping
    # would keep epoch 0.
    _, r, history = fit(model, x, torch.from_numpy(y), x_val, -y_val, cfg)
    val = [h["val_r"] for h in history]
    assert val[0] > max(val[3:])
    assert r.mean() == pytest.approx(max(val[3:]))
    with pytest.raises(BrainattError, match="entropy_start"):
        fit(model, x, torch.from_numpy(y), x_val, y_val, TrainConfig(epochs=3, attention_entropy=0.1, entropy_start=3))
    with pytest.raises(BrainattError, match="attention model"):
        fit(FactorizedEncoder(VOXEL_QUERY, 2, GRID, WIDTH), x, torch.from_numpy(y), x_val, y_val, cfg)
    # A subject without category voxels has no content queries: the prior has nothing to act on.
    no_content = AttentionRoutingEncoder(VOXEL_QUERY, 2, GRID, WIDTH, heads=2)
    _, r, _ = fit(no_content, x, torch.from_numpy(y), x_val, y_val, dataclasses.replace(cfg, entropy_start=0))
    assert np.isfinite(r).all()


def test_inputs_stay_in_host_memory_unless_a_gpu_has_room_for_all_of_them(monkeypatch) -> None:
    x, y = torch.zeros(10, 4, dtype=torch.float16), torch.zeros(10, 3)
    assert all(a is b for a, b in zip(stage_inputs(torch.device("cpu"), x, y), (x, y), strict=True))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (x.nbytes + y.nbytes, 10**12))
    cuda = torch.device("cuda")
    assert all(a is b for a, b in zip(stage_inputs(cuda, x, y), (x, y), strict=True))  # needs half the free memory
    live = object()  # not a tensor (bench/encoder.py's live backbone): nothing moves
    assert all(a is b for a, b in zip(stage_inputs(cuda, x, live), (x, live), strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_staged_inputs_equals_fit_on_host_inputs() -> None:
    x, y, _, _ = toy_world(300, 0)
    x_val, y_val, _, _ = toy_world(100, 1)
    assert stage_inputs(torch.device("cuda"), x)[0].is_cuda
    r = {}
    for stage in (True, False):
        torch.manual_seed(0)
        model = AttentionRoutingEncoder(VOXEL_QUERY, 2, GRID, WIDTH, heads=2, dropout=0.0).cuda()
        _, r[stage], _ = fit(model, x, torch.from_numpy(y), x_val, y_val, TrainConfig(epochs=3), stage=stage)
    np.testing.assert_allclose(r[True], r[False], atol=1e-4)


def test_ensemble_weights_are_a_per_voxel_softmax_summing_to_one() -> None:
    r = np.array([[0.2, 0.5], [0.4, 0.1]])
    w = ensemble_weights(r, temperature=40)
    np.testing.assert_allclose(w.sum(0), 1)
    assert w[1, 0] > 0.99 and w[0, 1] > 0.99
    np.testing.assert_allclose(ensemble_weights(r, temperature=0), 0.5)
    preds = torch.randn(2, 3, 2)  # (members, images, voxels): each member answers with its own predictions
    ensemble = MemberEnsemble([Fixed(p) for p in preds], [-1, -2], torch.from_numpy(w))
    weights = torch.from_numpy(w).float()
    torch.testing.assert_close(ensemble({-1: torch.zeros(3), -2: torch.zeros(3)}), (weights[:, None] * preds).sum(0))


class Fixed(torch.nn.Module):
    """A stand-in member that predicts ``out`` whatever its input."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out


def test_training_killed_mid_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_run(
    tmp_path, monkeypatch
) -> None:
    """Dropout on, so both random generators matter; a kill during epoch 4 leaves the epoch-3 state on disk."""
    import brainatt.encoding.train as train

    x, y, _, _ = toy_world(96, 0)
    x_val, y_val, _, _ = toy_world(40, 1)
    cfg = TrainConfig(epochs=7, batch=32, lr=3e-3, patience=7, lr_drop=3)

    def run(checkpoint=None, key=""):
        torch.manual_seed(0)
        model = AttentionRoutingEncoder(VOXEL_QUERY, 2, GRID, WIDTH, heads=2, ff=32, dropout=0.2)
        return fit(model, x, torch.from_numpy(y), x_val, y_val, cfg, checkpoint=checkpoint, key=key)

    whole, whole_r, whole_history = run()
    ckpt = tmp_path / "member.pt"
    calls, loss = {"n": 0}, train._loss

    def dying_loss(*args):
        calls["n"] += 1
        if calls["n"] == 3 * 3 + 2:  # 3 batches per epoch: the second batch of epoch 4 (index 3)
            raise KeyboardInterrupt
        return loss(*args)

    monkeypatch.setattr(train, "_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        run(ckpt, "a")
    monkeypatch.setattr(train, "_loss", loss)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 3
    resumed, resumed_r, resumed_history = run(ckpt, "a")
    assert [h["epoch"] for h in resumed_history] == [h["epoch"] for h in whole_history]
    assert [h["val_r"] for h in resumed_history] == [h["val_r"] for h in whole_history]
    np.testing.assert_array_equal(resumed_r, whole_r)
    for k, v in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    # A checkpoint saved under another key (other settings or data) is not resumed.
    _, _, fresh_history = run(ckpt, "b")
    assert [h["val_r"] for h in fresh_history] == [h["val_r"] for h in whole_history]
