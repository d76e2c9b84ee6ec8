"""Bad input stops with one line naming the file and the fix, a non-zero exit, and no partial output."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from brainatt.cli import main

BETAS = "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"


@pytest.fixture
def world(tiny_world: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny world, free to corrupt."""
    return Path(shutil.copytree(tiny_world, tmp_path / "nsd"))


def _rewrite_betas(path: Path, change: Callable[[np.ndarray], np.ndarray]) -> None:
    with h5py.File(path) as f:
        data = f["betas"][()]
    path.unlink()
    with h5py.File(path, "w") as f:
        f["betas"] = change(data)


def _nsdgeneral_voxel(root: Path) -> tuple[int, int, int]:
    roi = np.asarray(nib.load(str(root / "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz")).dataobj)
    return tuple(int(v) for v in np.argwhere(roi == 1)[0])


def _nan_voxel(data: np.ndarray, ijk: tuple[int, int, int]) -> np.ndarray:
    out = data.astype(np.float32) / 300
    out[:, ijk[2], ijk[1], ijk[0]] = np.nan  # h5py order (trials, Z, Y, X)
    return out


def _run(capsys: pytest.CaptureFixture, out: Path, *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    errors = [line for line in err if line.startswith("brainatt: error:")]
    assert len(errors) == 1, err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "temporary output left behind"
    return errors[0]


def _preprocess(root: Path, out: Path, *extra: str) -> list[str]:
    return ["preprocess", "--root", str(root), "--subject", "subj01", "--atlases", "prf-visualrois",
            "floc-faces", "nsdgeneral", "--out", str(out), *extra]  # fmt: skip


def test_missing_session_file(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (world / BETAS / "betas_session02.hdf5").unlink()
    out = tmp_path / "out/responses.h5"
    line = _run(capsys, out, *_preprocess(world, out))
    assert "betas_session02" in line and "missing" in line and "download" in line


def test_session_with_a_different_trial_count(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _rewrite_betas(world / BETAS / "betas_session03.hdf5", lambda d: d[:-5])
    out = tmp_path / "out/responses.h5"
    line = _run(capsys, out, *_preprocess(world, out))
    assert "betas_session03.hdf5" in line and "trials" in line and "re-download" in line


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_wrong_dtype(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture, dtype: type) -> None:
    _rewrite_betas(world / BETAS / "betas_session01.hdf5", lambda d: d.astype(dtype))
    out = tmp_path / "out/responses.h5"
    line = _run(capsys, out, *_preprocess(world, out))
    assert "betas_session01.hdf5" in line and "dtype" in line and "int16" in line


def test_wrong_shape(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _rewrite_betas(world / BETAS / "betas_session02.hdf5", lambda d: d[:, :-1])
    out = tmp_path / "out/responses.h5"
    line = _run(capsys, out, *_preprocess(world, out))
    assert "betas_session02.hdf5" in line and "does not match" in line


@pytest.mark.parametrize("session", ["01", "05"])  # first, and last: a failure midway leaves nothing either
def test_all_nan_voxel(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture, session: str) -> None:
    ijk = _nsdgeneral_voxel(world)
    _rewrite_betas(world / BETAS / f"betas_session{session}.hdf5", lambda d: _nan_voxel(d, ijk))
    out = tmp_path / "out/responses.h5"
    line = _run(capsys, out, *_preprocess(world, out))
    assert f"betas_session{session}.hdf5" in line and str(ijk) in line and "NaN" in line


def test_subject_missing_from_design(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out/responses.h5"
    argv = _preprocess(world, out)
    argv[argv.index("subj01")] = "subj05"
    line = _run(capsys, out, *argv)
    assert "nsd_expdesign.mat" in line and "subj05" in line and "dataset.subjects" in line


def test_unknown_roi_name(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out/responses.h5"
    line = _run(capsys, out, *_preprocess(world, out, "--mask", "floc-faces/NOPE"))
    assert "floc-faces.mgz.ctab" in line and "NOPE" in line and "FFA-1" in line and "dataset.mask" in line


def test_unknown_atlas(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out/responses.h5"
    line = _run(capsys, out, *_preprocess(world, out, "--mask", "floc-cars"))
    assert "floc-cars.nii.gz" in line and "not found" in line


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_hdf5(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture, damage: str) -> None:
    path = world / BETAS / "betas_session04.hdf5"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"\x00garbage" * 128 + raw[1024:])
    out = tmp_path / "out/responses.h5"
    line = _run(capsys, out, *_preprocess(world, out))
    assert "betas_session04.hdf5" in line and "re-download" in line


def test_corrupt_stimulus_file(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    stimuli = world / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
    stimuli.write_bytes(stimuli.read_bytes()[:2048])
    out = tmp_path / "out/images.h5"
    line = _run(capsys, out, "stimuli", "--root", str(world), "--subjects", "subj01", "--out", str(out))
    assert "nsd_stimuli.hdf5" in line and "re-download" in line
