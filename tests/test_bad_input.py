"""Bad input stops with one line naming the file and the fix, a non-zero exit, and no partial output."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from conftest import rewrite_betas

import brainatt.prep.responses as responses
from brainatt.cli import main
from brainatt.nsd.layout import NSDLayout
from brainatt.prep.stimuli import seen_nsd_ids

BETAS = "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
ROI = "nsddata/ppdata/subj01/func1pt8mm/roi"
STIMULI = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"


@pytest.fixture
def world(tiny_world: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny world, free to corrupt."""
    return Path(shutil.copytree(tiny_world, tmp_path / "nsd"))


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out/responses.h5"


def _sessions(root: Path) -> list[Path]:
    return sorted((root / BETAS).glob("betas_session*.hdf5"))


def _nsdgeneral_voxel(root: Path) -> tuple[int, int, int]:
    """(i,j,k) of a voxel inside nsdgeneral, in nibabel's (X,Y,Z) order."""
    roi = np.asarray(nib.load(str(root / ROI / "nsdgeneral.nii.gz")).dataobj)
    return tuple(int(v) for v in np.argwhere(roi == 1)[0])


def _nan_voxel(data: np.ndarray, ijk: tuple[int, int, int]) -> np.ndarray:
    """Float % signal change with one voxel NaN in every trial."""
    pct = data.astype(np.float32) / 300
    pct[:, ijk[2], ijk[1], ijk[0]] = np.nan  # h5py order (trials, Z, Y, X)
    return pct


def _smash_chunk(path: Path, dataset: str, coord: tuple[int, ...]) -> None:
    """Overwrite the stored bytes of the chunk holding ``coord``: the header stays intact, the data does not."""
    with h5py.File(path) as f:
        info = f[dataset].id.get_chunk_info_by_coord(coord)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)


def _run(capsys: pytest.CaptureFixture, out: Path, *argv: str) -> str:
    """Run the CLI; check exit 2, exactly one error line (the last one), and nothing left in the output folder."""
    code = main(list(argv))
    err = capsys.readouterr().err.rstrip("\n").split("\n")
    assert code == 2, err
    errors = [line for line in err if line.startswith("brainatt: error:")]
    assert len(errors) == 1, err
    assert err[-1] == errors[0], err  # nothing (no traceback, no continuation line) after it
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*.tmp")), "temporary output left behind"
    assert not out.parent.exists() or not list(out.parent.iterdir()), list(out.parent.iterdir())
    return errors[0]


def _preprocess(root: Path, out: Path, *extra: str) -> list[str]:
    return ["preprocess", "--root", str(root), "--subject", "subj01", "--atlases", "prf-visualrois",
            "floc-faces", "nsdgeneral", "--out", str(out), *extra]  # fmt: skip


def test_missing_session_file(world: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    path = world / BETAS / "betas_session02.hdf5"
    path.unlink()
    assert (world / BETAS / "betas_session03.hdf5").exists()
    line = _run(capsys, out, *_preprocess(world, out))
    assert str(path) in line and "missing" in line and "download it" in line


def test_session_with_a_different_trial_count(world: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    path = world / BETAS / "betas_session03.hdf5"
    rewrite_betas(path, lambda d: d[:-5])
    line = _run(capsys, out, *_preprocess(world, out))
    assert str(path) in line and "43 trials" in line and "48" in line and "re-download" in line


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_wrong_dtype(world: Path, out: Path, capsys: pytest.CaptureFixture, dtype: type) -> None:
    path = world / BETAS / "betas_session01.hdf5"
    rewrite_betas(path, lambda d: d.astype(dtype))
    line = _run(capsys, out, *_preprocess(world, out))
    assert str(path) in line and f"dtype {np.dtype(dtype)}" in line and "int16" in line and "re-export" in line


def test_wrong_shape(world: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    path = world / BETAS / "betas_session02.hdf5"
    rewrite_betas(path, lambda d: d[:, :-1])  # one z-slice short of the ROI volumes
    line = _run(capsys, out, *_preprocess(world, out))
    assert str(path) in line and "does not match" in line and "re-download" in line


def test_all_nan_voxel(world: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    ijk = _nsdgeneral_voxel(world)
    path = world / BETAS / "betas_session01.hdf5"
    rewrite_betas(path, lambda d: _nan_voxel(d, ijk))
    line = _run(capsys, out, *_preprocess(world, out))
    assert str(path) in line and f"voxel {ijk}" in line and "NaN" in line and "dataset.mask" in line


def test_failure_midway_leaves_no_partial_output(
    world: Path, out: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last session fails after the others were written: the temporary is removed, nothing appears."""
    ijk = _nsdgeneral_voxel(world)
    last = _sessions(world)[-1]
    rewrite_betas(last, lambda d: _nan_voxel(d, ijk))
    temporaries: dict[str, list[Path]] = {}
    read_session = responses.read_session

    def spy(path: Path, mask: np.ndarray, *args: object) -> np.ndarray:
        temporaries[path.name] = list(out.parent.glob(f".{out.name}.*.tmp"))
        return read_session(path, mask, *args)

    monkeypatch.setattr(responses, "read_session", spy)
    line = _run(capsys, out, *_preprocess(world, out))
    assert str(last) in line and f"voxel {ijk}" in line and "NaN" in line
    assert list(temporaries) == [p.name for p in _sessions(world)]  # every session was read, the last one failed
    assert temporaries[last.name], "the output was not being written when the last session failed"


def test_subject_missing_from_design(world: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    argv = _preprocess(world, out)
    argv[argv.index("subj01")] = "subj05"
    line = _run(capsys, out, *argv)
    design = world / "nsddata/experiments/nsd/nsd_expdesign.mat"
    assert str(design) in line and "subj05" in line and "dataset.subjects" in line


def test_unknown_roi_name(world: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    line = _run(capsys, out, *_preprocess(world, out, "--mask", "floc-faces/NOPE"))
    ctab = world / "nsddata/freesurfer/fsaverage/label/floc-faces.mgz.ctab"
    known = [row.split()[1] for row in ctab.read_text().splitlines()[1:]]
    assert str(ctab) in line and "'NOPE'" in line and "dataset.mask" in line
    assert known and all(name in line for name in known)


def test_unknown_atlas(world: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    line = _run(capsys, out, *_preprocess(world, out, "--mask", "floc-cars"))
    assert str(world / ROI / "floc-cars.nii.gz") in line and "not found" in line and "dataset" in line


@pytest.mark.parametrize("damage", ["truncate", "garbage-header", "bad-chunk"])
def test_corrupt_hdf5(world: Path, out: Path, capsys: pytest.CaptureFixture, damage: str) -> None:
    path = world / BETAS / "betas_session04.hdf5"
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage-header":
        path.write_bytes(b"\x00garbage" * 128 + raw[1024:])  # first 1 kB
    else:  # a compressed chunk inside the mask: the file opens, the read fails
        _smash_chunk(path, "betas", (0, _nsdgeneral_voxel(world)[2], 0, 0))
    line = _run(capsys, out, *_preprocess(world, out))
    assert str(path) in line and "corrupt" in line and "re-download" in line


def test_truncated_nifti_session(world: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    """A .nii.gz session whose header reads but whose gzip stream is cut."""
    h5 = world / BETAS / "betas_session03.hdf5"
    with h5py.File(h5) as f:
        data = f["betas"][()].transpose(3, 2, 1, 0)  # (trials,Z,Y,X) → (X,Y,Z,trials)
    h5.unlink()
    path = world / BETAS / "betas_session03.nii.gz"
    affine = nib.load(str(world / ROI / "nsdgeneral.nii.gz")).affine  # on the subject's grid: only the data is bad
    nib.save(nib.Nifti1Image(data, affine), str(path))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    line = _run(capsys, out, *_preprocess(world, out))
    assert str(path) in line and "corrupt" in line and "re-download" in line


@pytest.mark.parametrize("name", ["nsdgeneral.nii.gz", "floc-faces.nii.gz"])
def test_truncated_roi_volume(world: Path, out: Path, capsys: pytest.CaptureFixture, name: str) -> None:
    path = world / ROI / name
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    line = _run(capsys, out, *_preprocess(world, out))
    assert str(path) in line and "corrupt" in line and "re-download" in line


@pytest.mark.parametrize("damage", ["truncate", "bad-chunk"])
def test_corrupt_stimulus_file(world: Path, tmp_path: Path, capsys: pytest.CaptureFixture, damage: str) -> None:
    path = world / STIMULI
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:2048])
    else:  # compressed copy, then smash the chunk of an image subj01 saw
        with h5py.File(path) as f:
            brick = f["imgBrick"][()]
        with h5py.File(path, "w") as f:
            f.create_dataset("imgBrick", data=brick, chunks=(1, *brick.shape[1:]), compression="gzip")
        seen = seen_nsd_ids(NSDLayout(world), ["subj01"])
        _smash_chunk(path, "imgBrick", (int(seen[len(seen) // 2]), 0, 0, 0))
    out = tmp_path / "out/images.h5"
    line = _run(capsys, out, "stimuli", "--root", str(world), "--subjects", "subj01", "--out", str(out))
    assert str(path) in line and "re-download" in line
