"""NSD layout readers: axis order, scaling, 1-based indices, discovery of sessions."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io

from brainatt.nsd.layout import (
    NSDLayout,
    mask_voxel_ijk,
    read_atlas,
    read_expdesign,
    read_geometry,
    read_session,
    session_trial_count,
)


def _write_h5_session(path: Path, xyz_t: np.ndarray) -> None:
    """Write (X,Y,Z,T) data the way NSD's MATLAB export appears to h5py: (T,Z,Y,X)."""
    with h5py.File(path, "w") as f:
        f["betas"] = xyz_t.transpose(3, 2, 1, 0)


def test_planted_voxel_is_read_back_at_its_ijk(tmp_path: Path) -> None:
    shape, n_trials = (7, 9, 5), 11
    data = np.zeros((*shape, n_trials), np.int16)
    ijk = (5, 2, 3)
    data[ijk] = np.arange(n_trials, dtype=np.int16) * 300 + 300
    path = tmp_path / "betas_session01.hdf5"
    _write_h5_session(path, data)
    mask = np.zeros(shape, bool)
    mask[ijk] = True
    mask[1, 7, 0] = True  # a second, empty voxel elsewhere
    betas = read_session(path, mask)
    order = [tuple(v) for v in mask_voxel_ijk(mask)]
    col = order.index(ijk)
    np.testing.assert_allclose(betas[:, col], np.arange(1, n_trials + 1))
    np.testing.assert_array_equal(betas[:, 1 - col], 0)
    # The same volume as NIfTI (nibabel order X,Y,Z,T) reads identically.
    nii = tmp_path / "betas_session01.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(nii))
    np.testing.assert_array_equal(read_session(nii, mask), betas)


def test_int16_betas_are_divided_by_300_and_float_betas_are_not(tmp_path: Path) -> None:
    data = np.full((2, 2, 2, 3), 450, np.int16)
    _write_h5_session(tmp_path / "a.hdf5", data)
    _write_h5_session(tmp_path / "b.hdf5", data.astype(np.float32) / 300)
    mask = np.ones((2, 2, 2), bool)
    np.testing.assert_allclose(read_session(tmp_path / "a.hdf5", mask), 1.5)
    np.testing.assert_allclose(read_session(tmp_path / "b.hdf5", mask), 1.5)


def test_slab_streaming_matches_a_whole_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(-900, 900, size=(6, 5, 8, 13), dtype=np.int16)
    _write_h5_session(tmp_path / "s.hdf5", data)
    mask = rng.random((6, 5, 8)) < 0.4
    whole = read_session(tmp_path / "s.hdf5", mask)
    monkeypatch.setattr("brainatt.nsd.layout.SLAB_BYTES", 1)  # one z-plane per slab
    np.testing.assert_array_equal(read_session(tmp_path / "s.hdf5", mask), whole)
    expected = (
        data.transpose(3, 0, 1, 2)[
            :, mask_voxel_ijk(mask)[:, 0], mask_voxel_ijk(mask)[:, 1], mask_voxel_ijk(mask)[:, 2]
        ]
        / 300
    )
    np.testing.assert_allclose(whole, expected, rtol=1e-6)


def test_voxel_order_is_matlab_column_major() -> None:
    mask = np.zeros((3, 2, 2), bool)
    mask[2, 0, 0] = mask[0, 1, 0] = mask[0, 0, 1] = True
    # Column-major over (X,Y,Z): x varies fastest.
    assert [tuple(v) for v in mask_voxel_ijk(mask)] == [(2, 0, 0), (0, 1, 0), (0, 0, 1)]


def test_expdesign_indices_become_zero_based(tmp_path: Path) -> None:
    path = tmp_path / "nsd_expdesign.mat"
    scipy.io.savemat(
        str(path),
        {
            "masterordering": np.array([[2, 1, 2]]),
            "subjectim": np.array([[10, 20], [30, 40]]),
            "sharedix": np.array([[10]]),
        },
    )
    d = read_expdesign(path)
    np.testing.assert_array_equal(d.masterordering, [1, 0, 1])
    np.testing.assert_array_equal(d.sharedix, [9])
    np.testing.assert_array_equal(d.trial_nsd_ids(1, 3), [39, 29, 39])


def test_synth_tree_reads_like_nsd(tiny_world: Path, tiny_spec) -> None:
    layout = NSDLayout(tiny_world)
    sessions = layout.sessions("subj02")
    assert [p.name for p in sessions] == [f"betas_session{k:02d}.hdf5" for k in range(1, len(sessions) + 1)]
    assert len(sessions) == tiny_spec.sessions_of(1) < tiny_spec.n_sessions  # subj02 completed fewer sessions
    assert session_trial_count(sessions[0]) == tiny_spec.trials_per_session
    vol, names = read_atlas(layout, "subj01", "floc-faces", read_geometry(layout, "subj01"))
    assert set(np.unique(vol)) <= {-1, 0, 1, 2} and names == {1: "OFA", 2: "FFA-1"}
    d = read_expdesign(layout.expdesign)
    assert d.subjectim.min() == 0 and np.array_equal(d.subjectim[0, : tiny_spec.n_shared], d.sharedix)
