"""nsd-synth: scenes and captions, the shipped detector, the ground-truth brain and anatomy, against truth."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import torch

from brainatt.images import images_to_tensor
from brainatt.synth.anatomy import ATLASES, make_anatomy
from brainatt.synth.brain import N_ENERGY, VisualSystem
from brainatt.synth.detector import detector_iou, load_detector
from brainatt.synth.scenes import CATEGORIES, CATEGORY_WORDS, caption, render, render_many, sample_scene
from brainatt.synth.world import load_brain, world_fingerprint


def test_captions_name_exactly_the_categories_present() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = sample_scene(rng)
        text = caption(scene)
        named = {c for c, words in CATEGORY_WORDS.items() if any(w in text for w in words)}
        assert named == scene.categories(), text


def test_masks_cover_the_objects_drawn() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        scene = sample_scene(rng)
        _, masks = render(scene, 64, 16)
        covered = {CATEGORIES[k] for k in range(len(CATEGORIES)) if masks[k].sum() > 0.5}
        assert covered == scene.categories()


def test_shipped_detector_segments_held_out_scenes() -> None:
    rng = np.random.default_rng(12345)  # scenes never seen in training (seed 0)
    images, masks = render_many([sample_scene(rng) for _ in range(300)], 64, 16)
    iou = detector_iou(load_detector(), images_to_tensor(images), torch.from_numpy(masks))
    floors = {"face": 0.75, "body": 0.4, "place": 0.9, "word": 0.65, "food": 0.7}
    assert all(iou[c] >= floors[c] for c in CATEGORIES), iou


def test_anatomy_is_posterior_cortex_with_disjoint_rois() -> None:
    a = make_anatomy(np.random.default_rng(0), 4.0, 1.0)
    b = make_anatomy(np.random.default_rng(1), 4.0, 0.9)
    ijk = np.argwhere(a.nsdgeneral)
    xyz = ijk @ a.affine[:3, :3].T + a.affine[:3, 3]
    assert xyz[:, 1].max() < -20 and a.cortex[a.nsdgeneral].all()
    labelled = sum((a.atlases[name] > 0).astype(int) for name in ATLASES)
    assert labelled.max() == 1  # every voxel in at most one ROI
    assert (labelled.astype(bool) <= a.nsdgeneral).all()
    assert b.nsdgeneral.sum() < a.nsdgeneral.sum()  # smaller subject, fewer voxels
    words = np.argwhere(a.atlases["floc-words"] > 0) @ a.affine[:3, :3].T + a.affine[:3, 3]
    assert (words[:, 0] < 0).all()  # word areas are left-lateralised


def _kind_mask(gt: h5py.File, prefix: str) -> np.ndarray:
    return np.char.startswith(gt["kind"][()].astype(str), prefix)


def test_brain_is_category_selective_and_retinotopic(tiny_world: Path) -> None:
    brain = load_brain(tiny_world / "ground_truth", "subj01")
    rng = np.random.default_rng(7)
    scenes = [sample_scene(rng) for _ in range(200)]
    images, _ = render_many(scenes, 32, 8)
    with torch.no_grad():
        resp = brain(images_to_tensor(images)).numpy()
    with h5py.File(tiny_world / "ground_truth/subj01.h5") as gt:
        for cat in ("face", "place", "word", "food", "body"):
            roi = _kind_mask(gt, cat)
            has = np.array([cat in s.categories() for s in scenes])
            assert resp[has][:, roi].mean() > resp[~has][:, roi].mean() + 0.5, cat
        # Retinotopic voxels prefer a patch of texture inside their pRF to the same patch mirrored far away.
        v1 = np.flatnonzero(_kind_mask(gt, "V1"))[:40]
        xs, ys = gt["params/prf_x"][()][v1], gt["params/prf_y"][()][v1]
    checker = (np.indices((6, 6)).sum(0) % 2 * 255).astype(np.uint8)[..., None]

    def patch_at(px: float, py: float) -> np.ndarray:
        img = np.full((32, 32, 3), 128, np.uint8)
        i, j = int(np.clip(py * 32 - 3, 0, 26)), int(np.clip(px * 32 - 3, 0, 26))
        img[i : i + 6, j : j + 6] = checker
        return img

    with torch.no_grad():
        inside = brain(images_to_tensor(np.stack([patch_at(x, y) for x, y in zip(xs, ys, strict=True)]))).numpy()
        outside = brain(
            images_to_tensor(np.stack([patch_at(1 - x, 1 - y) for x, y in zip(xs, ys, strict=True)]))
        ).numpy()
    gain = inside[np.arange(len(v1)), v1] - outside[np.arange(len(v1)), v1]
    assert np.mean(gain > 0) >= 0.9 and np.median(gain) > 0.3, gain


def test_saved_brain_reproduces_ground_truth_responses(tiny_world: Path) -> None:
    brain = load_brain(tiny_world / "ground_truth", "subj02")
    with h5py.File(tiny_world / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5") as f:
        images = f["imgBrick"][:16]
    with h5py.File(tiny_world / "ground_truth/subj02.h5") as gt, torch.no_grad():
        np.testing.assert_allclose(brain(images_to_tensor(images)).numpy(), gt["responses"][:16], atol=1e-4)
    scenes = json.loads((tiny_world / "ground_truth/scenes.json").read_text())
    assert [s["nsd_id"] for s in scenes] == list(range(len(scenes)))


def test_visual_system_is_differentiable() -> None:
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    energy, cats = VisualSystem()(images)
    (energy.sum() + cats.sum()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_pooling_weights_are_the_gradient_of_the_category_pooling(tiny_world: Path) -> None:
    readout = load_brain(tiny_world / "ground_truth", "subj01").readout
    voxels = torch.as_tensor(np.flatnonzero(readout.category_gain.numpy() == 1.0)[:5])
    cats = torch.rand(3, len(CATEGORIES), 8, 8, requires_grad=True)
    k = int(readout.category_w[voxels[0]].argmax())
    weights = readout.pooling_weights(cats.detach(), k, voxels)
    for i, v in enumerate(voxels):
        (grad,) = torch.autograd.grad(readout.raw(torch.zeros(3, N_ENERGY, 8, 8), cats)[:, v].sum(), cats)
        scale = readout.category_gain[v] * readout.category_w[v, k]
        torch.testing.assert_close(grad[:, k].flatten(1) / scale, weights[:, i], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, len(voxels)))


def test_fingerprint_tracks_the_spec(tiny_spec) -> None:
    assert world_fingerprint(tiny_spec) == world_fingerprint(dataclasses.replace(tiny_spec))
    assert world_fingerprint(tiny_spec) != world_fingerprint(dataclasses.replace(tiny_spec, seed=99))
