"""MindBridge: the model's contracts (frozen sources under reset-tuning, unequal voxel counts), the losses and
retrieval metrics at their known optima, and decoding a tiny linear world well above chance."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from brainatt.io import BrainattError
from brainatt.metrics import pixel_correlation, retrieval_top1, ssim, two_way_identification
from brainatt.mindbridge.data import SubjectData, Targets
from brainatt.mindbridge.evaluate import evaluate_subject, predict
from brainatt.mindbridge.model import MindBridge, MindBridgeConfig, soft_clip_loss
from brainatt.mindbridge.summary import write_summary
from brainatt.mindbridge.train import TrainConfig, train_regime
from brainatt.models.loading import load_backbone, load_clip
from brainatt.models.spec import ModelSpec

TINY = MindBridgeConfig(pool=24, hidden=32, blocks=1, adapter=8, dropout_embedder=0.1, dropout_translator=0.0)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models step ~10x faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_world(
    voxels: dict[str, int], n_train: int = 240, n_test: int = 60, latent: int = 6, noise: float = 0.5, seed: int = 0
) -> tuple[dict[str, SubjectData], Targets]:
    """Stimuli with latents z; targets are fixed linear maps of z; subject s sees x = G_s z + noise (3 trials per
    training image, disjoint training images per subject, a shared test set)."""
    rng = np.random.default_rng(seed)
    n_subjects = len(voxels)
    n = n_test + n_train * n_subjects
    z = rng.standard_normal((n, latent))
    image = (z @ rng.standard_normal((latent, 2 * 16))).reshape(n, 2, 16)
    text = (z @ rng.standard_normal((latent, 12)))[:, None]
    targets = Targets(np.arange(n), image.astype(np.float32), text.astype(np.float32))
    test_ids = np.arange(n_test)
    data = {}
    for k, (s, v) in enumerate(voxels.items()):
        g = rng.standard_normal((latent, v))
        ids = np.arange(n_test + k * n_train, n_test + (k + 1) * n_train)
        trial_ids = np.repeat(ids, 3)
        trials = z[trial_ids] @ g + noise * rng.standard_normal((len(trial_ids), v))
        test = z[test_ids] @ g + noise / np.sqrt(3) * rng.standard_normal((n_test, v))
        data[s] = SubjectData(
            s, trials.astype(np.float32), trial_ids, np.repeat(np.arange(len(ids)) // 40 + 1, 3), test, test_ids
        )
    return data, targets


def test_subjects_with_different_voxel_counts_share_a_batch() -> None:
    model = MindBridge({"a": 50, "b": 73}, (2, 16), (1, 12), TINY)
    batch = {"a": torch.randn(4, 50), "b": torch.randn(3, 73)}
    image, text = model(batch)
    assert image.shape == (7, 2, 16) and text.shape == (7, 1, 12)
    losses = model.losses(batch, torch.randn(7, 2, 16), torch.randn(7, 1, 12), random.Random(0))
    assert torch.isfinite(losses["total"]) and losses["cyc"] > 0 and losses["rec"] > 0
    for agg in ("avg", "linear"):
        m = MindBridge({"a": 50, "b": 73}, (2, 16), (1, 12), MindBridgeConfig(**{**TINY.to_dict(), "aggregation": agg}))
        assert m(batch)[0].shape == (7, 2, 16)


def test_softclip_is_minimal_at_the_target() -> None:
    torch.manual_seed(0)
    target = torch.randn(16, 2, 8)
    tau = 0.5
    best = soft_clip_loss(target, target, tau)
    t = torch.nn.functional.normalize(target.flatten(1), dim=-1)
    labels = torch.softmax(t @ t.T / tau, -1)
    entropy = -(labels * labels.log()).sum(-1).mean()
    assert torch.isclose(best, entropy, atol=1e-5)
    for scale in (0.1, 0.5, 2.0):
        assert soft_clip_loss(target + scale * torch.randn_like(target), target, tau) > best
    assert torch.isclose(soft_clip_loss(3 * target, target, tau), best, atol=1e-5)  # scale-free


def test_retrieval_is_perfect_on_truth_and_chance_on_shuffled() -> None:
    rng = np.random.default_rng(0)
    true = rng.standard_normal((400, 32))
    assert retrieval_top1(true, true) == (1.0, 1.0)
    assert two_way_identification(true, true) == 1.0
    fwd, bwd = retrieval_top1(true[rng.permutation(400)], true, way=300, repeats=30)
    assert fwd < 0.02 and bwd < 0.02  # chance 1/300
    assert abs(two_way_identification(true[rng.permutation(400)], true) - 0.5) < 0.05


def test_reset_tuning_changes_only_the_new_subject() -> None:
    data, targets = tiny_world({"a": 40, "b": 55, "new": 47}, n_train=60, n_test=20)
    cfg = TrainConfig(epochs=1, batch=16)
    sources = {s: data[s] for s in ("a", "b")}
    bridge, _ = train_regime("bridge", sources, targets, TINY, cfg)
    before = {k: v.clone() for k, v in bridge.state_dict().items()}
    outputs = {s: predict(bridge, s, data[s].test) for s in sources}
    adapted, _ = train_regime("reset", data, targets, TINY, cfg, target="new", init=bridge)
    after = adapted.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not changed, f"reset-tuning changed frozen parameters {sorted(changed)}"
    new = [k for k in after if k not in before]
    assert new and all(k.split(".")[1] == "new" for k in new)
    for s in sources:
        image, text = predict(adapted, s, data[s].test)
        assert np.array_equal(image, outputs[s][0]) and np.array_equal(text, outputs[s][1])
    with pytest.raises(BrainattError, match="hold it out"):
        train_regime("reset", data, targets, TINY, cfg, target="a", init=adapted)


def test_a_tiny_world_is_decoded_well_above_chance() -> None:
    data, targets = tiny_world({"a": 60, "b": 80})
    model, history = train_regime("bridge", data, targets, TINY, TrainConfig(epochs=8, batch=32, lr=3e-3))
    assert history[-1]["total"] < history[0]["total"]
    for s in data:
        scores, _ = evaluate_subject(model, data[s], targets)
        assert scores["image_retrieval"] > 10 * scores["chance"], scores  # chance 1/60
        assert scores["two_way_id"] > 0.85


def test_limited_data_takes_the_first_images_shown() -> None:
    data, _ = tiny_world({"a": 20}, n_train=30, n_test=5)
    d = data["a"]
    first = d.limit(4)
    shown = d.trial_ids[np.sort(np.unique(d.trial_ids, return_index=True)[1])][:4]
    assert set(first.trial_ids) == set(shown) and len(first.trial_ids) == 12  # every trial of those images
    assert first.trial_session.max() == 1
    with pytest.raises(BrainattError, match="31 training images asked"):
        d.limit(31)


def test_paper_size_counts_match_the_reference() -> None:
    """The paper's 4-subject model has 693.6 M parameters, 37.8 M per subject (built on the meta device)."""
    with torch.device("meta"):
        cfg = MindBridgeConfig(pool=8192, hidden=2048, blocks=4, adapter=128)
        model = MindBridge({f"s{i}": 12000 + i for i in range(4)}, (257, 768), (77, 768), cfg)
        before = sum(p.numel() for p in model.parameters())
        model.add_subject("new", 9000)
    per_subject = sum(p.numel() for p in model.subject_parameters("new"))
    assert round(before / 1e6, 1) == 693.5 and round(per_subject / 1e6, 1) == 37.8
    assert sum(p.numel() for p in model.parameters()) == before + per_subject


def test_image_metrics_are_one_on_identical_images() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((3, 16, 16))
    assert np.allclose(pixel_correlation(images, images), 1) and np.allclose(ssim(images, images), 1)
    assert ssim(images, rng.random((3, 16, 16))).max() < 0.5


def test_summary_names_a_missing_run(tmp_path: Path) -> None:
    with pytest.raises(BrainattError, match="rerun the mindbridge regime rule"):
        write_summary([tmp_path / "bridge"], tmp_path / "t.tsv", tmp_path / "f.png")


def test_an_interrupted_run_resumes_to_the_same_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, targets = tiny_world({"a": 30, "b": 41}, n_train=40, n_test=10)  # 120 trials: 8 steps of 16 per epoch
    cfg = TrainConfig(epochs=3, batch=16, checkpoint_every=1)
    whole, history = train_regime("bridge", data, targets, TINY, cfg)
    checkpoint = tmp_path / "bridge.ckpt"
    steps = 0
    losses = MindBridge.losses

    def crash_in_epoch_two(self: MindBridge, *args: object) -> dict[str, torch.Tensor]:
        nonlocal steps
        steps += 1
        if steps > 11:
            raise KeyboardInterrupt
        return losses(self, *args)

    monkeypatch.setattr(MindBridge, "losses", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_regime("bridge", data, targets, TINY, cfg, checkpoint=checkpoint)
    monkeypatch.setattr(MindBridge, "losses", losses)
    assert checkpoint.exists()
    resumed, resumed_history = train_regime("bridge", data, targets, TINY, cfg, checkpoint=checkpoint)
    assert resumed_history == history
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_the_backbone_pooled_embedding_is_the_clip_image_embedding() -> None:
    """Why the image targets may come from the encoders' backbone feature file when both roles are one CLIP model."""
    clip_spec = {"name": "kit:clip", "source": "open_clip"}
    backbone = load_backbone(ModelSpec.from_config("backbone", {**clip_spec, "layers": [-3, -1]}))
    clip = load_clip(ModelSpec.from_config("clip", clip_spec))
    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(backbone(images)["pooled"], clip.encode_image(images))
