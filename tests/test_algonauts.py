"""Algonauts 2023 layout: NSD recipe → export → read back equals the NSD path; bad files stop cleanly; the CLI."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from brainatt.cli import main
from brainatt.io import BrainattError
from brainatt.nsd.layout import NSDLayout
from brainatt.prep.algonauts import preprocess_algonauts, write_algonauts_stimuli
from brainatt.prep.responses import preprocess_subject
from brainatt.prep.stimuli import write_stimuli
from brainatt.synth.algonauts import SYNTH_ATLASES, export_algonauts

SUBJECTS = ["subj01", "subj02"]


@pytest.fixture(scope="module")
def exported(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    """Both tiny-world subjects through the NSD recipe, then exported in the challenge layout."""
    work = tmp_path_factory.mktemp("algonauts")
    layout = NSDLayout(tiny_world)
    nsd = {s: preprocess_subject(layout, s, work / f"{s}.h5", ["nsdgeneral"], SYNTH_ATLASES) for s in SUBJECTS}
    return nsd, export_algonauts(nsd, layout.stimuli, work / "algonauts")


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "algonauts"))


def _all_ids(path: Path) -> np.ndarray:
    with h5py.File(path) as f:
        return np.concatenate([f["train/nsd_ids"][()], f["test/nsd_ids"][()]])


@pytest.mark.parametrize("subject", SUBJECTS)
def test_round_trip_equals_nsd_path(exported: tuple[dict[str, Path], Path], tmp_path: Path, subject: str) -> None:
    nsd, root = exported
    # The reader's test split is the images every subject has; in this world both saw all shared images.
    every = np.intersect1d(*[_all_ids(nsd[s]) for s in SUBJECTS])
    out = preprocess_algonauts(root, subject, tmp_path / "r.h5")
    with h5py.File(nsd[subject]) as a, h5py.File(out) as b:
        np.testing.assert_array_equal(np.sort(a["test/nsd_ids"][()]), every)
        hemi = a["voxels/hemi"][()]
        perm = np.concatenate([np.flatnonzero(hemi == b"lh"), np.flatnonzero(hemi == b"rh")])
        np.testing.assert_array_equal(b["voxels/hemi"][()], hemi[perm])
        n_lh = int((hemi == b"lh").sum())
        np.testing.assert_array_equal(b["voxels/vertex"][()], np.r_[np.arange(n_lh), np.arange(len(hemi) - n_lh)])
        for split in ("train", "test"):
            ids = a[f"{split}/nsd_ids"][()]
            order = np.argsort(ids)
            np.testing.assert_array_equal(b[f"{split}/nsd_ids"][()], ids[order])
            np.testing.assert_allclose(b[f"{split}/betas"][()], a[f"{split}/betas"][()][order][:, perm], atol=1e-6)
            np.testing.assert_array_equal(b[f"{split}/n_reps"][()], a[f"{split}/n_reps"][()][order])
        for atlas in SYNTH_ATLASES:
            np.testing.assert_array_equal(b[f"voxels/roi/{atlas}"][()], a[f"voxels/roi/{atlas}"][()][perm])
            np.testing.assert_array_equal(b[f"voxels/roi_names/{atlas}"][()], a[f"voxels/roi_names/{atlas}"][()])
        assert sorted(b["voxels/roi"]) == sorted(SYNTH_ATLASES)
        np.testing.assert_allclose(b["voxels/ncsnr"][()], a["voxels/ncsnr"][()][perm], rtol=1e-6)
        np.testing.assert_allclose(b["voxels/nc_test"][()], a["voxels/nc_test"][()][perm], rtol=1e-5)
        assert b["voxels/ncsnr"].attrs["source"] == b["voxels/nc_test"].attrs["source"] == "extension"
        assert b["trials/betas"].shape == (0, len(hemi)) and len(b["trials/nsd_ids"]) == 0
        assert "ijk" not in b["voxels"] and b.attrs["subject"] == subject and b.attrs["config_hash"]


def test_without_extension_files_noise_ceiling_is_unknown(
    exported: tuple[dict[str, Path], Path], tmp_path: Path
) -> None:
    root = _copy(exported[1], tmp_path)
    fmri = root / "subj01/training_split/training_fmri"
    for name in ("lh_ncsnr.npy", "rh_ncsnr.npy", "n_reps.npy"):
        (fmri / name).unlink()
    with h5py.File(preprocess_algonauts(root, "subj01", tmp_path / "r.h5")) as f:
        assert np.isnan(f["voxels/ncsnr"][()]).all() and np.isnan(f["voxels/nc_test"][()]).all()
        assert f["voxels/nc_test"].attrs["source"] == f["test/n_reps"].attrs["source"] == "unknown"
        assert not f["train/n_reps"][()].any()


def _shuffle_rows(folder: Path, rng: np.random.Generator) -> None:
    """Reorder a subject's rows (fMRI, n_reps and image numbering together), as real files need not be sorted."""
    images = folder / "training_images"
    old = sorted(images.iterdir())  # 4-digit row numbers: name order is row order
    perm = rng.permutation(len(old))  # new row i is old row perm[i]
    for name in ("lh_training_fmri.npy", "rh_training_fmri.npy", "n_reps.npy"):
        path = folder / "training_fmri" / name
        np.save(path, np.load(path)[perm])
    renamed = folder / "renamed"
    renamed.mkdir()
    for i, j in enumerate(perm):
        old[j].rename(renamed / f"train-{i + 1:04d}_nsd-{old[j].name.split('_nsd-')[1]}")
    images.rmdir()
    renamed.rename(images)


def test_row_order_of_the_files_does_not_matter(exported: tuple[dict[str, Path], Path], tmp_path: Path) -> None:
    root = _copy(exported[1], tmp_path)
    _shuffle_rows(root / "subj02/training_split", np.random.default_rng(0))  # subj02: mixed repeats
    want = preprocess_algonauts(exported[1], "subj02", tmp_path / "sorted.h5")
    got = preprocess_algonauts(root, "subj02", tmp_path / "shuffled.h5")
    with h5py.File(want) as a, h5py.File(got) as b:
        names: list[str] = []
        a.visit(lambda name: names.append(name) if isinstance(a[name], h5py.Dataset) else None)
        assert "train/betas" in names and "voxels/nc_test" in names
        for name in names:
            np.testing.assert_array_equal(b[name][()], a[name][()], err_msg=name)


def _remove(path: Path) -> None:
    path.unlink()


def _drop_a_row(path: Path) -> None:
    np.save(path, np.load(path)[:-1])


def _to_int(path: Path) -> None:
    np.save(path, np.load(path).astype(np.int32))


@pytest.mark.parametrize(
    ("name", "damage"),
    [("lh_training_fmri.npy", _remove), ("rh_training_fmri.npy", _drop_a_row), ("lh_training_fmri.npy", _to_int)],
)
def test_bad_fmri_file_stops_naming_it(
    exported: tuple[dict[str, Path], Path], tmp_path: Path, name: str, damage: Callable[[Path], None]
) -> None:
    root = _copy(exported[1], tmp_path)
    bad = root / "subj01/training_split/training_fmri" / name
    damage(bad)
    out = tmp_path / "prep" / "r.h5"
    out.parent.mkdir()
    with pytest.raises(BrainattError, match=re.escape(str(bad))):
        preprocess_algonauts(root, "subj01", out)
    assert list(out.parent.iterdir()) == []


def test_negative_extension_ncsnr_stops_naming_it(exported: tuple[dict[str, Path], Path], tmp_path: Path) -> None:
    root = _copy(exported[1], tmp_path)
    bad = root / "subj01/training_split/training_fmri/rh_ncsnr.npy"
    ncsnr = np.load(bad)
    ncsnr[3] = -1.0
    np.save(bad, ncsnr)
    with pytest.raises(BrainattError, match=re.escape(f"{bad}: ncsnr holds 1 negative or infinite values")):
        preprocess_algonauts(root, "subj01", tmp_path / "r.h5")


def test_constant_vertex_is_warned_and_gets_no_noise_ceiling(
    exported: tuple[dict[str, Path], Path], tmp_path: Path
) -> None:
    root = _copy(exported[1], tmp_path)
    path = root / "subj01/training_split/training_fmri/lh_training_fmri.npy"
    fmri = np.load(path)
    fmri[:, 2] = 0.25
    np.save(path, fmri)
    out = preprocess_algonauts(root, "subj01", tmp_path / "r.h5")
    with h5py.File(out) as f:
        assert json.loads(f.attrs["warnings"]) == {"constant_voxels": 1, "empty_atlases": 0}
        assert f["voxels/ncsnr"][2] == 0 and f["voxels/nc_test"][2] == 0 and (f["voxels/nc_test"][()] > 0).sum() > 1


def test_stimuli_match_the_nsd_path(exported: tuple[dict[str, Path], Path], tiny_world: Path, tmp_path: Path) -> None:
    got = write_algonauts_stimuli(exported[1], SUBJECTS, tmp_path / "a.h5")
    want = write_stimuli(NSDLayout(tiny_world), SUBJECTS, tmp_path / "n.h5")
    with h5py.File(got) as a, h5py.File(want) as b:
        np.testing.assert_array_equal(a["nsd_ids"][()], b["nsd_ids"][()])
        np.testing.assert_array_equal(a["images"][()], b["images"][()])
        assert "captions" not in a


def test_cli_synthesizes_and_reads_the_algonauts_layout(tmp_path: Path) -> None:
    spec = {
        "seed": 5,
        "n_subjects": 2,
        "n_train": 12,
        "n_shared": 4,
        "image_size": 32,
        "trials_per_session": 48,
        "sessions_kept": [1.0],
        "voxel_mm": 6.0,
    }
    root = tmp_path / "world"
    assert main(["synthesize", "--layout", "algonauts", "--spec", json.dumps(spec), "--out", str(root)]) == 0
    assert (root / "subj01/training_split/training_fmri/lh_training_fmri.npy").is_file()
    assert (root / "ground_truth/world.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]  # no temporaries left behind
    out = tmp_path / "r.h5"
    argv = ["preprocess", "--layout", "algonauts", "--root", str(root), "--subject", "subj02", "--out", str(out)]
    assert main(argv) == 0
    with h5py.File(out) as f:
        assert len(f["test/nsd_ids"]) == 4 and len(f["train/nsd_ids"]) == 12
