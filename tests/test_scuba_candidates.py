"""BrainSCUBA's candidate embeddings from each source: an image folder (with an unreadable file), an HDF5 of
images, a precomputed embedding file (with zero and NaN rows), and the candidate file contract."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from brainatt.cli import main
from brainatt.contracts.candidates import Candidates, candidates_writer
from brainatt.io import BrainattError
from brainatt.models.spec import ModelSpec

CLIP = json.dumps({"name": "kit:clip"})


def _embed(images: np.ndarray) -> np.ndarray:
    from brainatt.features.candidates import _embed
    from brainatt.models.loading import load_clip

    return _embed(load_clip(ModelSpec(role="clip", name="kit:clip")), images, "cpu")


def test_folder_candidates_skip_unreadable_files_with_a_count(tmp_path, caplog) -> None:
    from brainatt.features.candidates import read_image

    rng = np.random.default_rng(0)
    folder = tmp_path / "coco"
    (folder / "sub").mkdir(parents=True)
    for size, name in [((40, 30), "a.png"), ((64, 64), "b.PNG"), ((50, 80), "sub/c.jpg"), ((33, 33), "d.jpeg")]:
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / name)
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8), "L").save(folder / "gray.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "cand.h5"
    with caplog.at_level("WARNING"):
        assert main(["scuba-candidates", "--source", "folder", "--path", str(folder), "--model", CLIP,
                     "--out", str(out)]) == 0  # fmt: skip
    assert "broken.jpg" in caplog.text and "1 unreadable images, 0 zero or non-finite" in caplog.text
    cands = Candidates(out)
    assert cands.names() == ["a.png", "b.PNG", "d.jpeg", "gray.png", "sub/c.jpg"]
    assert cands.rejected == {"unreadable": 1, "zero_or_nonfinite": 0} and cands.source == "folder"
    raw = np.concatenate([e for _, e in cands.chunks(2)])
    expected = _embed(read_image(folder / "sub/c.jpg", (64, 64))[None])[0]
    np.testing.assert_allclose(raw[4], expected, rtol=1e-4, atol=1e-5)
    assert raw.shape == (5, 128) and (np.linalg.norm(raw, axis=1) > 0).all()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.png").write_bytes(b"broken")
    assert main(["scuba-candidates", "--source", "folder", "--path", str(empty), "--model", CLIP,
                 "--out", str(tmp_path / "none.h5")]) == 2  # fmt: skip
    assert not (tmp_path / "none.h5").exists()


def test_image_file_candidates_read_the_named_dataset(tmp_path, capsys) -> None:
    images = np.random.default_rng(1).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    src = tmp_path / "coco.h5"
    with h5py.File(src, "w") as f:
        f["pics"] = images
    args = ["scuba-candidates", "--source", "images", "--path", str(src), "--model", CLIP, "--batch", "2"]
    assert main([*args, "--out", str(tmp_path / "cand.h5")]) == 2
    assert "no dataset 'images'" in capsys.readouterr().err
    assert main([*args, "--dataset", "pics", "--out", str(tmp_path / "cand.h5")]) == 0
    cands = Candidates(tmp_path / "cand.h5")
    assert cands.names()[:2] == ["coco.h5:0", "coco.h5:1"] and len(cands) == 5
    np.testing.assert_allclose(next(cands.chunks(5))[1], _embed(images), rtol=1e-4, atol=1e-5)


def test_precomputed_embeddings_drop_zero_and_nan_rows_with_a_count(tmp_path, caplog) -> None:
    raw = np.random.default_rng(2).normal(size=(7, 8)) * 5
    raw[2] = np.nan
    raw[5] = 0
    src = tmp_path / "emb.h5"
    with h5py.File(src, "w") as f:
        f["embeddings"] = raw
    out = tmp_path / "cand.h5"
    with caplog.at_level("WARNING"):
        assert main(["scuba-candidates", "--source", "embeddings", "--path", str(src), "--out", str(out)]) == 0
    assert "0 unreadable images, 2 zero or non-finite embeddings" in caplog.text
    cands = Candidates(out)
    assert cands.rejected == {"unreadable": 0, "zero_or_nonfinite": 2} and cands.model_spec == ""
    assert cands.names() == [f"emb.h5:{i}" for i in (0, 1, 3, 4, 6)]
    np.testing.assert_allclose(next(cands.chunks(10))[1], raw[[0, 1, 3, 4, 6]].astype(np.float32))
    with h5py.File(src, "w") as f:
        f["embeddings"] = np.zeros((3, 8))
    assert main(["scuba-candidates", "--source", "embeddings", "--path", str(src), "--out", str(out)]) == 2


def test_candidate_file_contract_refuses_damaged_files(tmp_path) -> None:
    path = tmp_path / "cand.h5"
    with pytest.raises(BrainattError, match="missing"):
        Candidates(path)
    with candidates_writer(path, {}, 4, "embeddings", "x.h5") as w:
        w.add(np.ones((3, 4), np.float32), ["a", "b", "c"])
    with h5py.File(path, "a") as f:
        f["embeddings"][1] = np.nan
    cands = Candidates(path)
    with pytest.raises(BrainattError, match=r"cand\.h5: rows 0"):
        list(cands.chunks(8))
    with h5py.File(path, "a") as f:
        del f["names"]
    with pytest.raises(BrainattError, match="'names'"):
        Candidates(path)
