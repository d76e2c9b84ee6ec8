"""Encoding figures on small fake inputs in the encoding stage's file contracts."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from matplotlib.image import AxesImage
from PIL import Image

from brainatt.contracts.responses import Voxels, responses_writer
from brainatt.contracts.stimuli import stimuli_writer
from brainatt.io import BrainattError
from brainatt.viz.encoding import (
    FIGURES,
    attention_figure,
    in_mni_space,
    make_encoding_figures,
    plot_accuracy_by_roi,
    plot_attention_maps,
    plot_brain_maps,
    plot_voxel_scatter,
    roi_title,
    scatter_pair,
    top_images,
    voxel_image,
    voxel_values,
)

AFFINE = np.array([[4.0, 0, 0, -72], [0, 4, 0, -112], [0, 0, 4, -40], [0, 0, 0, 1]])  # nsd-synth's MNI grid
SHAPE = (37, 21, 21)
GRID = (4, 4)
QUERIES = ["lh.V1v", "lh.FFA-1", "lh.rest", "rh.V1v", "rh.FFA-1", "rh.rest", "rh.OWFA"]  # rh.OWFA has no voxels
ENCODERS = ["ridge_tokens", "transformer"]


def _is_png(path: Path) -> bool:
    with Image.open(path) as im:
        im.verify()
        return im.format == "PNG" and im.size[0] > 50 and im.size[1] > 50


def _cell(q: int) -> tuple[int, int]:
    """The grid cell where query q's planted attention peaks."""
    return divmod(q, GRID[1])


def _peak_cell(ax: plt.Axes) -> tuple[int, int]:
    """The grid cell where the attention overlay of a panel peaks."""
    att = [im for im in ax.get_children() if isinstance(im, AxesImage)][-1].get_array()
    cell = np.unravel_index(np.argmax(att), att.shape)
    return cell[0] * GRID[0] // att.shape[0], cell[1] * GRID[1] // att.shape[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("enc")
    # 60 voxels in posterior MNI cortex (x −24..24, y −88..−64, z −8..16 mm), in shuffled order
    grid = np.stack(np.meshgrid([12, 15, 21, 24], np.arange(6, 13, 2), np.arange(8, 15, 2), indexing="ij"), -1)
    ijk = rng.permutation(grid.reshape(-1, 3))[:60]
    v = len(ijk)
    x = ijk[:, 0] * 4 - 72
    hemi = np.where(x < 0, "lh", "rh")
    roi = rng.choice(["V1v", "FFA-1", "rest"], v)
    family = pd.Series(roi).map({"V1v": "retinotopic", "FFA-1": "category", "rest": "other"}).to_numpy()
    nc = rng.uniform(1, 60, v)
    test_ids = np.arange(100, 112)
    responses = d / "responses.h5"
    with responses_writer(responses, "subj01", {}, "z") as w:
        w.split("test", test_ids, np.full(len(test_ids), 3), rng.normal(size=(len(test_ids), v)))
        w.split("train", np.arange(10), np.ones(10), rng.normal(size=(10, v)))
        w.trials(0, v)
        w.trial_index(np.zeros(0), np.zeros(0))
        rois = {"prf-visualrois": (roi == "V1v").astype(np.int16)}
        w.voxels(
            Voxels(
                hemi=hemi,
                rois=rois,
                roi_names={"prf-visualrois": {1: "V1v"}},
                ncsnr=np.ones(v),
                nc_test=nc,
                ijk=ijk,
                affine=AFFINE,
                mask_shape=SHAPE,
            )
        )
    stim_ids = np.arange(90, 130)  # a superset of the test images
    stimuli = d / "images.h5"
    with stimuli_writer(stimuli, {}, stim_ids, (16, 16, 3)) as w:
        w.images[:] = rng.integers(0, 256, (len(stim_ids), 16, 16, 3), dtype=np.uint8)
        w.captions([["a scene"]] * len(stim_ids))
    scores = {}
    for k, enc in enumerate(ENCODERS):
        r = np.clip(np.sqrt(nc / 100) * (0.6 + 0.2 * k) + rng.normal(0, 0.05, v), -1, 1)
        scores[enc] = pd.DataFrame(
            {
                "voxel": np.arange(v),
                "roi": roi,
                "hemi": hemi,
                "family": family,
                "r": r,
                "r2": r**2,
                "nc": nc,
                "nc_norm": np.maximum(r, 0) ** 2 / (nc / 100),
                "r_truth": np.nan,
            }
        ).sample(frac=1, random_state=k)  # rows in any order: `voxel` says which voxel
        out = d / "encoding/subj01" / enc
        out.mkdir(parents=True)
        scores[enc].to_csv(out / "voxel_scores.tsv", sep="\t", index=False)
        with h5py.File(out / "test_pred.h5", "w") as f:
            f["nsd_ids"] = test_ids
            f["pred"] = rng.normal(size=(len(test_ids), v)).astype(np.float32)
    # attention maps: every query's maps peak at its own cell; images in another order, one test image missing
    att_ids = rng.permutation(test_ids)[:-1]
    maps = np.full((len(QUERIES), len(att_ids), *GRID), 0.2 / (GRID[0] * GRID[1] - 1))
    for q in range(len(QUERIES)):
        maps[(q, slice(None), *_cell(q))] = 0.8
    with h5py.File(d / "encoding/subj01/transformer/attention.h5", "w") as f:
        f["queries"] = np.array(QUERIES, dtype="S")
        f["nsd_ids"] = att_ids
        f["maps"] = maps.astype(np.float16)
        f.attrs["grid"] = list(GRID)
    rows = [
        {
            "subject": s,
            "encoder": e,
            "roi": roi_,
            "family": fam,
            "n_voxels": 10,
            "mean_r": 0.3,
            "nc_norm": rng.uniform(0.2, 0.8),
            "nc_norm_all": 0.3,
            "r_truth": np.nan,
        }
        for s in ("subj01", "subj02", "subj03")
        for e in ENCODERS
        for roi_, fam in [
            ("V1v", "retinotopic"),
            ("FFA-1", "category"),
            ("rest", "other"),
            ("family:retinotopic", "retinotopic"),
            ("family:category", "category"),
            ("all", "all"),
        ]
    ]
    table = d / "encoding.tsv"
    pd.DataFrame(rows).to_csv(table, sep="\t", index=False)
    background = nib.Nifti1Image((np.arange(np.prod(SHAPE)).reshape(SHAPE) % 7 + 1).astype(np.float32), AFFINE)
    return {
        "dir": d,
        "responses": responses,
        "stimuli": stimuli,
        "scores": scores,
        "table": table,
        "ijk": ijk,
        "hemi": hemi,
        "nc": nc,
        "att_ids": att_ids,
        "background": background,
    }


def test_voxel_image_puts_each_value_at_its_ijk(world: dict) -> None:
    scores, ijk, nc = world["scores"]["transformer"], world["ijk"], world["nc"]
    r = voxel_values(scores, len(ijk), "r")
    img = voxel_image(r, ijk, AFFINE, SHAPE)
    vol = np.asarray(img.dataobj)
    by_voxel = scores.set_index("voxel")["r"]
    for v, (i, j, k) in enumerate(ijk):
        assert vol[i, j, k] == pytest.approx(by_voxel[v])
    assert np.isnan(vol).sum() == vol.size - len(ijk)
    np.testing.assert_array_equal(img.affine, AFFINE)
    # nc_norm is shown only where NC ≥ 5%
    ncn = voxel_values(scores, len(ijk), "nc_norm", nc)
    assert np.array_equal(np.isnan(ncn), nc < 5)


def test_mni_space_is_detected_from_the_affine(world: dict) -> None:
    assert in_mni_space(world["ijk"], AFFINE, world["hemi"])
    native = np.diag([1.8, 1.8, 1.8, 1.0])  # a native grid: inside the MNI brain, but the left voxels at x > 0
    assert not in_mni_space(world["ijk"], native, world["hemi"])
    shifted = AFFINE.copy()
    shifted[1, 3] += 200  # 20 cm anterior: out of the brain
    assert not in_mni_space(world["ijk"], shifted, world["hemi"])


def test_top_images_are_the_highest_predicted_roi_means(world: dict) -> None:
    d, scores = world["dir"], world["scores"]["transformer"]
    with h5py.File(d / "encoding/subj01/transformer/test_pred.h5") as f:
        ids, pred = f["nsd_ids"][()], f["pred"][()]
    vox = scores.loc[(scores.hemi == "lh") & (scores.roi == "FFA-1"), "voxel"].to_numpy()
    top, means = top_images(pred, ids, vox, 3)
    brute = sorted(((pred[n, vox].mean(), ids[n]) for n in range(len(ids))), reverse=True)[:3]
    assert list(top) == [b[1] for b in brute]
    np.testing.assert_allclose(means, [b[0] for b in brute], rtol=1e-6)
    # in the figure, ranking runs over the images that have attention maps
    att = d / "encoding/subj01/transformer"
    fig, panels = attention_figure(att / "attention.h5", world["stimuli"], att / "test_pred.h5", scores, n_top=3)
    plt.close(fig)
    has_att = np.isin(ids, world["att_ids"])
    top_att, _ = top_images(pred[has_att], ids[has_att], vox, 3)
    assert panels.loc[panels["query"] == "lh.FFA-1", "nsd_id"].tolist() == list(top_att)


def test_attention_panels_show_the_plain_head_mean_when_the_file_has_it(world: dict, tmp_path: Path) -> None:
    d = world["dir"] / "encoding/subj01/transformer"
    both = tmp_path / "attention.h5"
    shutil.copy(d / "attention.h5", both)
    with h5py.File(both, "r+") as f:
        f["maps_head_mean"] = f["maps"][()][::-1]  # each query's head mean peaks at the last query's cell
    fig, _ = attention_figure(both, world["stimuli"], d / "test_pred.h5", world["scores"]["transformer"])
    for ax in fig.axes:
        if ax.get_gid():
            assert _peak_cell(ax) == _cell(len(QUERIES) - 1 - QUERIES.index(ax.get_gid()))
    assert "plain mean over heads" in fig.get_suptitle()
    plt.close(fig)


def test_attention_panels_show_their_own_query(world: dict) -> None:
    d = world["dir"] / "encoding/subj01/transformer"
    fig, panels = attention_figure(
        d / "attention.h5", world["stimuli"], d / "test_pred.h5", world["scores"]["transformer"]
    )
    shown = {ax.get_gid() for ax in fig.axes if ax.get_gid()}
    assert shown == {"lh.V1v", "lh.FFA-1", "rh.V1v", "rh.FFA-1"}  # no rest, no empty ROI
    n_titled = 0
    for ax in fig.axes:
        q = ax.get_gid()
        if not q:
            continue
        assert _peak_cell(ax) == _cell(QUERIES.index(q))
        if ax.get_title() == roi_title(q):
            n_titled += 1
    assert n_titled == len(shown)  # each query's first panel is titled with that query
    assert set(panels["query"]) == shown and (panels.groupby("query").size() == 4).all()
    fig_rest, _ = attention_figure(
        d / "attention.h5", world["stimuli"], d / "test_pred.h5", world["scores"]["transformer"], include_rest=True
    )
    assert {"lh.rest", "rh.rest"} <= {ax.get_gid() for ax in fig_rest.axes}
    fig_named, panels_named = attention_figure(
        d / "attention.h5", world["stimuli"], d / "test_pred.h5", world["scores"]["transformer"], rois=["rh.rest"]
    )
    assert set(panels_named["query"]) == {"rh.rest"}  # a rest ROI named is drawn
    plt.close(fig_named)
    with pytest.raises(BrainattError, match=r"no voxels in ROI 'rh\.OWFA'"):
        attention_figure(
            d / "attention.h5", world["stimuli"], d / "test_pred.h5", world["scores"]["transformer"], rois=["rh.OWFA"]
        )
    plt.close(fig)
    plt.close(fig_rest)


def test_each_figure_is_a_png(world: dict, tmp_path: Path) -> None:
    d, scores = world["dir"], world["scores"]
    table = pd.read_csv(world["table"], sep="\t")
    plot_accuracy_by_roi(table, tmp_path / "acc.png")
    plot_accuracy_by_roi(table[table.subject == "subj01"], tmp_path / "acc1.png")
    plot_brain_maps(
        {"transformer": scores["transformer"]}, world["responses"], tmp_path / "maps.png", world["background"], "r"
    )
    att = d / "encoding/subj01/transformer"
    plot_attention_maps(
        att / "attention.h5",
        world["stimuli"],
        att / "test_pred.h5",
        scores["transformer"],
        tmp_path / "att.png",
        n_top=2,
    )
    counts = plot_voxel_scatter(scores["transformer"], scores["ridge_tokens"], tmp_path / "scatter.png")
    for name in ("acc.png", "acc1.png", "maps.png", "att.png", "scatter.png"):
        assert _is_png(tmp_path / name), name
    a = scores["transformer"].set_index("voxel")
    b = scores["ridge_tokens"].set_index("voxel").loc[a.index]
    keep = a["nc"] >= 5
    assert counts["above"] == int((a.nc_norm[keep] > b.nc_norm[keep]).sum())
    assert counts["below"] == int((a.nc_norm[keep] < b.nc_norm[keep]).sum())
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_make_encoding_figures_writes_all_four(world: dict, tmp_path: Path) -> None:
    written = make_encoding_figures(
        tmp_path,
        table=world["table"],
        subject="subj01",
        encoding_dir=world["dir"] / "encoding",
        responses_h5=world["responses"],
        stimuli_h5=world["stimuli"],
        encoders=ENCODERS,
    )  # the background defaults to the MNI152 template: the affine is MNI
    assert written == {
        "accuracy": tmp_path / FIGURES["accuracy"],
        **{k: tmp_path / "subj01" / FIGURES[k] for k in ("brain_maps", "scatter", "attention")},
    }
    assert all(_is_png(p) for p in written.values())


@pytest.mark.parametrize("encoders", [["ridge_tokens"], ["transformer"], ["transformer", "ridge_tokens"]])
def test_figures_for_any_subset_of_encoders(world: dict, tmp_path: Path, encoders: list[str]) -> None:
    """As the encoding_figures rule calls it: a scatter needs two encoders, attention maps the transformer."""
    written = make_encoding_figures(
        tmp_path,
        subject="subj01",
        encoding_dir=world["dir"] / "encoding",
        responses_h5=world["responses"],
        stimuli_h5=world["stimuli"],
        encoders=encoders,
        attention_encoder="transformer" if "transformer" in encoders else None,
        background=world["background"],
    )
    expected = {
        "brain_maps",
        *(["scatter"] if len(encoders) >= 2 else []),
        *(["attention"] if "transformer" in encoders else []),
    }
    assert set(written) == expected and all(_is_png(p) for p in written.values())


def test_scatter_pair_is_the_richest_encoder_against_a_baseline() -> None:
    assert scatter_pair(["ridge_pooled", "ridge_tokens", "factorized", "transformer"]) == (
        "transformer",
        "ridge_tokens",
    )
    assert scatter_pair(["ridge_pooled", "factorized"]) == ("factorized", "ridge_pooled")
    assert scatter_pair(["ridge_tokens", "ridge_pooled"]) == ("ridge_tokens", "ridge_pooled")
    assert scatter_pair(["transformer"]) is None


def test_attention_rows_are_rois_whatever_the_query_mode(world: dict, tmp_path: Path) -> None:
    d, scores = world["dir"] / "encoding/subj01/transformer", world["scores"]["transformer"]
    fig, panels = attention_figure(d / "attention.h5", world["stimuli"], d / "test_pred.h5", scores)
    plt.close(fig)
    with h5py.File(d / "attention.h5") as f:
        roi_maps, att_ids = f["maps"][()], f["nsd_ids"][()]
    by_voxel = scores.sort_values("voxel")
    labels = (by_voxel["hemi"] + "." + by_voxel["roi"]).tolist()
    # One query per voxel, each with its ROI's map: the rows, panels and maps are the ROI queries'.
    per_voxel = tmp_path / "attention_voxel.h5"
    with h5py.File(per_voxel, "w") as f:
        f["queries"] = np.array([f"{label}#{v}" for v, label in enumerate(labels)], dtype="S")
        f["voxel_query"] = np.arange(len(labels))
        f["nsd_ids"] = att_ids
        f["maps"] = roi_maps[[QUERIES.index(label) for label in labels]]
        f.attrs["grid"] = list(GRID)
    fig_voxel, panels_voxel = attention_figure(per_voxel, world["stimuli"], d / "test_pred.h5", scores)
    pd.testing.assert_frame_equal(panels_voxel, panels)
    for ax in fig_voxel.axes:
        if ax.get_gid():
            assert _peak_cell(ax) == _cell(QUERIES.index(ax.get_gid()))
    plt.close(fig_voxel)
    # One query per hemisphere: every ROI row of a hemisphere shows that query's map.
    per_hemi = tmp_path / "attention_hemi.h5"
    with h5py.File(per_hemi, "w") as f:
        f["queries"] = np.array([b"lh", b"rh"])
        f["voxel_query"] = (by_voxel["hemi"] == "rh").to_numpy().astype(int)
        f["nsd_ids"] = att_ids
        f["maps"] = roi_maps[[QUERIES.index("lh.V1v"), QUERIES.index("rh.V1v")]]
        f.attrs["grid"] = list(GRID)
    fig_hemi, panels_hemi = attention_figure(per_hemi, world["stimuli"], d / "test_pred.h5", scores)
    pd.testing.assert_frame_equal(panels_hemi, panels)
    for ax in fig_hemi.axes:
        if ax.get_gid():
            assert _peak_cell(ax) == _cell(QUERIES.index(ax.get_gid().split(".")[0] + ".V1v"))
    plt.close(fig_hemi)
