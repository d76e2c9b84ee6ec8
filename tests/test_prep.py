"""Preprocessing: the NSD recipe against a direct numpy computation, noise ceilings against truth, determinism."""

from __future__ import annotations

import dataclasses
import filecmp
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io

from brainatt.metrics import noise_ceiling
from brainatt.nsd.layout import NSDLayout
from brainatt.prep.responses import preprocess_subject
from brainatt.synth.writer import write_world

ATLASES = ["prf-visualrois", "floc-faces", "nsdgeneral"]


def _direct_recipe(root: Path, subject: str, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The recipe written out with plain scipy/h5py/nibabel/numpy: (ids, mean betas, n_reps, shared ids)."""
    mat = scipy.io.loadmat(str(root / "nsddata/experiments/nsd/nsd_expdesign.mat"))
    roi = nib.load(str(root / f"nsddata/ppdata/{subject}/func1pt8mm/roi/nsdgeneral.nii.gz")).get_fdata() > 0
    betas_dir = root / f"nsddata_betas/ppdata/{subject}/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    z = []
    for path in sorted(betas_dir.glob("betas_session*.hdf5")):
        with h5py.File(path) as f:
            b = f["betas"][()].astype(np.float32) / 300  # (T, Z, Y, X)
        b = b[:, roi.T]  # NSD's documented masking of h5py-ordered betas
        z.append((b - b.mean(0)) / (b.std(0) + 1e-6))
    z = np.concatenate(z)
    order = mat["masterordering"].astype(int)  # MATLAB stores doubles
    ids = mat["subjectim"].astype(int)[s, order[0, : len(z)] - 1] - 1
    uniq = np.unique(ids)
    mean = np.stack([z[ids == u].mean(0) for u in uniq])
    reps = np.array([(ids == u).sum() for u in uniq])
    return uniq, mean, reps, mat["sharedix"][0].astype(int) - 1


@pytest.mark.parametrize("subject", ["subj01", "subj02"])
def test_preprocessing_equals_direct_numpy(tiny_world: Path, tmp_path: Path, subject: str) -> None:
    out = preprocess_subject(NSDLayout(tiny_world), subject, tmp_path / "r.h5", ["nsdgeneral"], ATLASES)
    ids, mean, reps, shared = _direct_recipe(tiny_world, subject, int(subject[-2:]) - 1)
    with h5py.File(out) as f:
        got_ids = np.concatenate([f["train/nsd_ids"][()], f["test/nsd_ids"][()]])
        got = np.concatenate([f["train/betas"][()], f["test/betas"][()]])
        got_reps = np.concatenate([f["train/n_reps"][()], f["test/n_reps"][()]])
        assert np.isin(f["test/nsd_ids"][()], shared).all() and not np.isin(f["train/nsd_ids"][()], shared).any()
        # test images keep sharedix order, identical across subjects
        np.testing.assert_array_equal(f["test/nsd_ids"][()], shared[np.isin(shared, ids)])
        assert f["trials/betas"].shape == (reps.sum(), mean.shape[1])
        nc = f["voxels/nc_test"][()]
        ncsnr = f["voxels/ncsnr"][()]
        test_reps = f["test/n_reps"][()]
    order = np.argsort(got_ids)
    np.testing.assert_array_equal(got_ids[order], ids)
    np.testing.assert_array_equal(got_reps[order], reps)
    np.testing.assert_allclose(got[order], mean, atol=2e-5)
    np.testing.assert_allclose(nc, noise_ceiling(ncsnr, test_reps), rtol=1e-5)


def test_noise_ceiling_mixed_repeats() -> None:
    # 2 images seen 3×, 1 image 1×: mean(1/n) = (2/3 + 1)/3
    nc = noise_ceiling(np.array([1.0]), np.array([3, 3, 1]))
    np.testing.assert_allclose(nc, 100 / (1 + (2 / 3 + 1) / 3))


def test_ncsnr_from_repeats_recovers_truth(tmp_path: Path, tiny_spec) -> None:
    spec = dataclasses.replace(
        tiny_spec, n_subjects=1, n_train=400, n_shared=40, trials_per_session=264, sessions_kept=(1.0,)
    )
    root = write_world(spec, tmp_path / "nsd")
    out = preprocess_subject(NSDLayout(root), "subj01", tmp_path / "r.h5", ["nsdgeneral"], ATLASES)
    with h5py.File(out) as f, h5py.File(root / "ground_truth/subj01.h5") as gt:
        estimated = f["voxels/ncsnr_estimated"][()]
        np.testing.assert_array_equal(f["voxels/ijk"][()], gt["ijk"][()])
        truth = gt["ncsnr"][()]
    r = np.corrcoef(estimated, truth)[0, 1]
    assert r >= 0.9, r
    assert abs(np.median(estimated) / np.median(truth) - 1) < 0.15


def test_same_seed_gives_identical_files(tmp_path: Path, tiny_spec) -> None:
    spec = dataclasses.replace(
        tiny_spec, n_subjects=1, n_train=20, n_shared=4, trials_per_session=24, sessions_kept=(1.0,)
    )
    a, b = write_world(spec, tmp_path / "a"), write_world(spec, tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) > 20
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(p) for p in files], shallow=False)
    assert not mismatch and not errors
    ra = preprocess_subject(NSDLayout(a), "subj01", tmp_path / "ra.h5", ["nsdgeneral"], ATLASES)
    rb = preprocess_subject(NSDLayout(b), "subj01", tmp_path / "rb.h5", ["nsdgeneral"], ATLASES)
    with h5py.File(ra) as fa, h5py.File(rb) as fb:
        names: list[str] = []
        fa.visit(lambda n: names.append(n) if isinstance(fa[n], h5py.Dataset) else None)
        for n in names:
            np.testing.assert_array_equal(fa[n][()], fb[n][()], err_msg=n)
        assert fa.attrs["config_hash"] != "" and dict(fa.attrs).keys() == dict(fb.attrs).keys()
    c = write_world(dataclasses.replace(spec, seed=spec.seed + 1), tmp_path / "c")
    assert not filecmp.cmp(
        a / "nsddata/experiments/nsd/nsd_expdesign.mat", c / "nsddata/experiments/nsd/nsd_expdesign.mat", shallow=False
    )


def test_nifti_and_hdf5_sessions_give_the_same_responses(tmp_path: Path, tiny_spec) -> None:
    spec = dataclasses.replace(
        tiny_spec, n_subjects=1, n_train=20, n_shared=4, trials_per_session=24, sessions_kept=(1.0,)
    )
    roots = {fmt: write_world(dataclasses.replace(spec, betas_format=fmt), tmp_path / fmt) for fmt in ("hdf5", "nifti")}
    assert list((roots["nifti"] / "nsddata_betas").rglob("betas_session01.nii.gz"))
    out = {
        fmt: preprocess_subject(NSDLayout(r), "subj01", tmp_path / f"{fmt}.h5", ["nsdgeneral"], ATLASES)
        for fmt, r in roots.items()
    }
    with h5py.File(out["hdf5"]) as a, h5py.File(out["nifti"]) as b:
        for name in ("train/betas", "test/betas", "trials/betas", "voxels/ijk", "voxels/nc_test"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)


def test_stimuli_hold_each_seen_image_once_one_compressed_chunk_per_image(tiny_world: Path, tmp_path: Path) -> None:
    from brainatt.contracts.stimuli import Stimuli
    from brainatt.prep.stimuli import seen_nsd_ids, write_stimuli

    layout = NSDLayout(tiny_world)
    out = write_stimuli(layout, ["subj01", "subj02"], tmp_path / "images.h5")
    ids = seen_nsd_ids(layout, ["subj01", "subj02"])
    with h5py.File(layout.stimuli) as f:
        brick = f["imgBrick"][()]
    with h5py.File(out) as f:
        images = f["images"]
        assert images.chunks == (1, *images.shape[1:]) and images.compression == "gzip"
        np.testing.assert_array_equal(f["nsd_ids"][()], ids)  # once each, sorted
        np.testing.assert_array_equal(images[()], brick[ids])  # lossless
        assert images.id.get_storage_size() < images.nbytes / 2  # nsd-synth scenes: flat colours (3x at 32 px)
    np.testing.assert_array_equal(Stimuli(out).images(ids[[3, 0]]), brick[ids[[3, 0]]])  # by id, in the order asked
