"""Encoding figures: accuracy per ROI × encoder, accuracy brain maps, attention routing on top images, voxel scatter.

Inputs are the encoding stage's files (DESIGN.md, "Data contracts"): ``voxel_scores.tsv`` and ``test_pred.h5`` per
subject and encoder, the transformer's ``attention.h5``, ``results/tables/encoding.tsv``, plus ``responses.h5``
(voxel coordinates) and ``images.h5`` (stimuli). `make_encoding_figures` writes them all for the Snakemake rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import ndimage

from brainatt.contracts.encoding import (
    ATTENTION,
    TEST_PRED,
    VOXEL_SCORES,
    open_attention,
    read_test_predictions,
    read_voxel_scores,
)
from brainatt.contracts.responses import read_responses
from brainatt.contracts.stimuli import Stimuli
from brainatt.encoding.attention_maps import roi_attention, roi_voxels, voxel_labels, voxel_queries
from brainatt.encoding.evaluate import NC_MIN
from brainatt.io import BrainattError, atomic_path

FAMILY_ORDER = ("retinotopic", "category", "other")
FAMILY_COLORS = {"retinotopic": "#2c7bb6", "category": "#d7191c", "other": "#9e9e9e"}
ENCODER_ORDER = ("ridge_pooled", "ridge_tokens", "factorized", "transformer")
ENCODER_COLORS = {
    "ridge_pooled": "#a6cee3",
    "ridge_tokens": "#1f78b4",
    "factorized": "#33a02c",
    "transformer": "#e66101",
}
ROI_ORDER = (  # NSD's prf-visualrois and floc atlases (plus nsd-synth's food ROI), in atlas order
    *("V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"),
    *("OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"),
    *("EBA", "FBA-1", "FBA-2", "mTL-bodies"),
    *("OPA", "PPA", "RSC"),
    *("OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"),
    "food",
)
VALUE_LABELS = {
    "nc_norm": "NC-normalised accuracy (r₊²/NC)",
    "nc_norm_all": "NC-normalised accuracy, all voxels",
    "r": "Pearson r",
    "mean_r": "mean Pearson r",
    "r_truth": "r vs noise-free truth",
}
FIGURES = {  # file names make_encoding_figures writes
    "accuracy": "encoding_accuracy_by_roi.png",
    "brain_maps": "encoding_brain_maps.png",
    "attention": "encoding_attention.png",
    "scatter": "encoding_voxel_scatter.png",
}
DPI = 150


def _save(fig: Figure, out: str | Path) -> Path:
    """Write ``fig`` atomically (format from the suffix) and close it."""
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=DPI, format=Path(out).suffix.lstrip("."))
    finally:
        plt.close(fig)
    return Path(out)


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise BrainattError(f"{what}: missing column(s) {missing}: re-run the encoding stage that writes it")


def _ordered(names: Sequence[str], canonical: Sequence[str]) -> list[str]:
    """Unique ``names``: the canonical ones first in canonical order, the rest in order of appearance."""
    seen = list(dict.fromkeys(names))
    return [n for n in canonical if n in seen] + [n for n in seen if n not in canonical]


def encoder_colors(encoders: Sequence[str]) -> dict[str, str]:
    """A fixed colour per known encoder; unknown ones take unused tab10 colours."""
    spare = iter(c for c in plt.get_cmap("tab10").colors if matplotlib.colors.to_hex(c) not in ENCODER_COLORS.values())
    return {e: ENCODER_COLORS.get(e) or matplotlib.colors.to_hex(next(spare)) for e in encoders}


def _value_label(value: str) -> str:
    return VALUE_LABELS.get(value, value)


# --- 1. accuracy per ROI × encoder ---------------------------------------------------------------------------


def plot_accuracy_by_roi(table: pd.DataFrame, out: str | Path, value: str = "nc_norm") -> Path:
    """Grouped bars of ``value`` per ROI × encoder from ``results/tables/encoding.tsv``.

    ROIs are grouped by family (retinotopic, category, other), in NSD atlas order within a family; the
    ``family:<f>`` and ``all`` summary rows follow. With several subjects bars are means ± SEM over subjects
    with one dot per subject; with one subject, its values.
    """
    _require(table, ["subject", "encoder", "roi", "family", value], "encoding table")
    summary = table["roi"].str.startswith("family:") | (table["roi"] == "all")
    per_roi = table[~summary]
    families = _ordered(per_roi["family"].tolist(), FAMILY_ORDER)
    groups = [(f, _ordered(per_roi.loc[per_roi["family"] == f, "roi"].tolist(), ROI_ORDER)) for f in families]
    summary_rois = [f"family:{f}" for f in families if f"family:{f}" in set(table["roi"])]
    groups.append(("summary", summary_rois + (["all"] if "all" in set(table["roi"]) else [])))
    groups = [(name, rois) for name, rois in groups if rois]
    encoders = _ordered(table["encoder"].tolist(), ENCODER_ORDER)
    colors = encoder_colors(encoders)
    subjects = sorted(table["subject"].unique())
    vals = table.pivot_table(index="roi", columns=["encoder", "subject"], values=value, aggfunc="mean")

    width = 0.8 / len(encoders)
    x, ticks, labels, spans = 0.0, [], [], []
    for name, rois in groups:
        start = x
        for roi in rois:
            ticks.append(x)
            labels.append(roi.replace("family:", "all ") if roi != "all" else "all voxels")
            x += 1
        spans.append((name, start - 0.5, x - 0.5))
        x += 0.6
    n_bars = len(ticks) * len(encoders)
    fig, ax = plt.subplots(figsize=(min(max(4.0, 0.13 * n_bars + 1.8), 18), 3.6), layout="constrained")
    rois = [r for _, rs in groups for r in rs]
    for k, enc in enumerate(encoders):
        xs = np.asarray(ticks) + (k - (len(encoders) - 1) / 2) * width
        per_subject = (
            vals[enc].reindex(index=rois, columns=subjects)
            if enc in vals.columns.get_level_values(0)
            else pd.DataFrame(np.nan, index=rois, columns=subjects)
        )
        mean = per_subject.mean(axis=1).to_numpy()
        sem = per_subject.sem(axis=1, ddof=1).to_numpy() if len(subjects) > 1 else None
        ax.bar(xs, mean, width, yerr=sem, color=colors[enc], label=enc, error_kw={"lw": 0.8, "capsize": 0})
        if len(subjects) > 1:
            pts = per_subject.to_numpy()
            ax.scatter(
                np.repeat(xs, pts.shape[1]), pts.ravel(), s=5, color="k", alpha=0.55, lw=0, zorder=3, clip_on=False
            )
    for name, lo, hi in spans:
        if name != spans[0][0]:
            ax.axvline(lo - 0.3, color="0.75", lw=0.8)
        ax.text((lo + hi) / 2, 1.01, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=9)
    ax.set_xticks(ticks, labels, rotation=55, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_xlim(-0.7, x - 0.9)
    if value.startswith("nc_norm"):
        ax.set_ylim(bottom=0)
    ax.axhline(0, color="k", lw=0.6)
    ax.spines[["top", "right"]].set_visible(False)
    who = subjects[0] if len(subjects) == 1 else f"mean ± SEM over {len(subjects)} subjects (dots: subjects)"
    nc = f", voxels with NC ≥ {NC_MIN:g}%" if value == "nc_norm" else ""
    ax.set_ylabel(_value_label(value))
    ax.set_title(f"{who}{nc}", fontsize=9, loc="left", pad=16)
    fig.legend(loc="outside upper right", ncols=len(encoders), frameon=False, fontsize=8)
    return _save(fig, out)


# --- 2. brain maps -------------------------------------------------------------------------------------------


def read_voxels(responses_h5: str | Path) -> dict:
    """Voxel coordinates, hemispheres and noise ceilings of a ``responses.h5``: ijk, affine, mask_shape, nc, hemi,
    config (the preprocessing config, naming the NSD tree)."""
    r = read_responses(responses_h5, betas=False)
    v = r.voxels
    if not v.has_volume:
        raise BrainattError(
            f"{responses_h5}: no voxels/ijk (surface data such as Algonauts): brain maps need volume data; "
            "leave the brain-map figure out for this dataset"
        )
    return {
        "ijk": v.ijk,
        "affine": v.affine,
        "mask_shape": v.mask_shape,
        "nc": v.nc_test,
        "hemi": v.hemi,
        "config": r.config,
    }


def voxel_image(values: np.ndarray, ijk: np.ndarray, affine: np.ndarray, shape: Sequence[int]) -> nib.Nifti1Image:
    """A float32 NIfTI volume holding ``values[v]`` at ``ijk[v]`` and NaN elsewhere."""
    vol = np.full(tuple(shape), np.nan, dtype=np.float32)
    vol[tuple(np.asarray(ijk).T)] = values
    return nib.Nifti1Image(vol, affine)


def voxel_values(scores: pd.DataFrame, n_voxels: int, value: str, nc: np.ndarray | None = None) -> np.ndarray:
    """Per-voxel ``value`` in responses.h5 voxel order (NaN where absent; for nc_norm also where NC < 5%)."""
    _require(scores, ["voxel", value], "voxel scores")
    out = np.full(n_voxels, np.nan)
    vox = scores["voxel"].to_numpy(dtype=np.int64)
    if vox.size and (vox.min() < 0 or vox.max() >= n_voxels):
        raise BrainattError(
            f"voxel scores index voxels up to {vox.max()} but responses.h5 has {n_voxels}: "
            "the scores belong to another subject or preprocessing; re-run the encoding stage"
        )
    out[vox] = scores[value].to_numpy(dtype=np.float64)
    if value == "nc_norm":
        out[(nc if nc is not None else np.full(n_voxels, np.inf)) < NC_MIN] = np.nan
    return out


def in_mni_space(ijk: np.ndarray, affine: np.ndarray, hemi: np.ndarray, min_fraction: float = 0.95) -> bool:
    """Whether the affine maps the voxels into MNI space: they fall inside nilearn's MNI152 brain mask and the
    left-hemisphere voxels lie at x < 0, the right ones at x > 0."""
    from nilearn import datasets

    mask = datasets.load_mni152_brain_mask(resolution=2)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    idx = np.rint((xyz - mask.affine[:3, 3]) @ np.linalg.inv(mask.affine[:3, :3]).T).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < mask.shape), axis=1)
    inside = np.zeros(len(idx), dtype=bool)
    inside[ok] = np.asarray(mask.dataobj)[tuple(idx[ok].T)] > 0
    sided = np.where(np.asarray(hemi) == "lh", xyz[:, 0] < 0, xyz[:, 0] > 0)
    return bool(inside.mean() >= min_fraction and sided.mean() >= min_fraction)


def _background(background: str | Path | nib.Nifti1Image | None, vox: dict, source: str | Path) -> nib.Nifti1Image:
    """The anatomy to draw on: the given image; else nilearn's MNI152 template when the voxels are in MNI space
    (nsd-synth); else, from the NSD tree responses.h5 was made from, the subject's ``T1_to_<space>.nii.gz`` or
    its brainmask."""
    from nilearn import datasets

    if background is not None:
        return nib.load(str(background)) if isinstance(background, str | Path) else background
    if in_mni_space(vox["ijk"], vox["affine"], vox["hemi"]):
        return datasets.load_mni152_template(resolution=1)
    cfg = vox["config"]
    if {"root", "subject"} <= cfg.keys() and Path(cfg["root"]).is_dir():
        from brainatt.nsd.layout import NSDLayout

        layout = NSDLayout(cfg["root"], space=cfg.get("space", "func1pt8mm"))
        for path in (layout.ppdata(cfg["subject"]) / f"T1_to_{layout.space}.nii.gz", layout.brainmask(cfg["subject"])):
            if path.exists():
                return nib.load(str(path))
    raise BrainattError(
        f"{source}: voxels are not in MNI space and the subject's T1 or brainmask was not found in the NSD tree: "
        "pass a background anatomy image in the functional space"
    )


def _ceil(x: float, step: float = 0.1) -> float:
    return float(np.ceil(x / step) * step) if np.isfinite(x) and x > 0 else step


def plot_brain_maps(
    scores: Mapping[str, pd.DataFrame],
    responses_h5: str | Path,
    out: str | Path,
    background: str | Path | nib.Nifti1Image | None = None,
    value: str = "nc_norm",
    n_cuts: int = 6,
) -> Path:
    """Axial slices of per-voxel ``value`` on the subject's anatomy, one row per encoder, shared colour scale.

    Voxels are drawn as their own blocks (nearest-neighbour); measured voxels without a colour (light grey) are at
    zero (for nc_norm: r ≤ 0, or NC below 5%).
    """
    from nilearn import plotting

    vox = read_voxels(responses_h5)
    bg = _background(background, vox, responses_h5)
    n = len(vox["ijk"])
    values = {enc: voxel_values(df, n, value, vox["nc"]) for enc, df in scores.items()}
    if not values:
        raise BrainattError("no voxel scores given: pass at least one encoder's voxel_scores.tsv")
    stacked = np.concatenate(list(values.values()))
    signed = value != "nc_norm" and np.nanmin(stacked) < 0
    vmax = _ceil(np.nanquantile(np.abs(stacked), 0.99)) if np.isfinite(stacked).any() else 1.0
    if value == "nc_norm":
        vmax = min(vmax, 1.0)
    cmap = "RdBu_r" if signed else "inferno"
    coverage = nib.Nifti1Image(np.zeros(vox["mask_shape"], np.float32), vox["affine"])
    coverage.dataobj[tuple(vox["ijk"].T)] = 1
    z = (vox["ijk"] @ vox["affine"][:3, :3].T + vox["affine"][:3, 3])[:, 2]
    cuts = np.unique(np.round(np.quantile(z, np.linspace(0.08, 0.92, n_cuts))))

    row_h, head = 1.5, 0.25  # inches per encoder row and for its title
    fig_h = (row_h + head) * len(values) + 0.15
    fig = plt.figure(figsize=(1.2 * len(cuts) + 1.3, fig_h))
    measured = matplotlib.colors.ListedColormap(["#bdbdbd"])
    bg_floor = 0.01 * float(np.nanmax(np.asarray(bg.dataobj)))
    for i, (enc, vals) in enumerate(values.items()):
        top = 1 - i * (row_h + head) / fig_h
        ax = fig.add_axes((0.0, top - (row_h + head) / fig_h, 0.9, row_h / fig_h))
        display = plotting.plot_anat(
            bg,
            display_mode="z",
            cut_coords=cuts,
            axes=ax,
            figure=fig,
            annotate=False,
            draw_cross=False,
            black_bg=False,
            colorbar=False,
            threshold=bg_floor,  # transparent outside the head
        )
        display.add_overlay(
            coverage, cmap=measured, vmin=0, vmax=1, transparency=0.6, resampling_interpolation="nearest"
        )
        display.add_overlay(
            nib.Nifti1Image(
                np.nan_to_num(voxel_image(vals, vox["ijk"], vox["affine"], vox["mask_shape"]).dataobj), vox["affine"]
            ),
            cmap=cmap,
            vmin=-vmax if signed else 0,
            vmax=vmax,
            resampling_interpolation="nearest",
        )
        if i == len(values) - 1:
            display.annotate(left_right=True, positions=True, size=7)
        mean = np.nanmean(vals) if np.isfinite(vals).any() else np.nan
        fig.text(0.01, top - 0.15 * head / fig_h, f"{enc}  (mean {mean:.2f})", fontsize=9, va="top")
    cax = fig.add_axes((0.915, 0.2, 0.015, 0.6))
    sm = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(-vmax if signed else 0, vmax), cmap=cmap)
    cb = fig.colorbar(sm, cax=cax, extend="both" if signed else "max")
    label = _value_label(value) + (f"\nvoxels with NC ≥ {NC_MIN:g}%" if value == "nc_norm" else "")
    cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return _save(fig, out)


# --- 3. attention routing ------------------------------------------------------------------------------------


def parse_roi_label(label: str) -> tuple[str, str]:
    """``'lh.FFA-1'`` → ``('lh', 'FFA-1')``."""
    hemi, sep, roi = label.partition(".")
    if not sep or hemi not in ("lh", "rh"):
        raise BrainattError(f"ROI label {label!r} is not '<lh|rh>.<roi>': the voxel scores' hemi column is not lh/rh")
    return hemi, roi


def top_images(pred: np.ndarray, nsd_ids: np.ndarray, voxels: np.ndarray, n_top: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_top`` images with the highest predicted mean response over ``voxels``: (nsd ids, means)."""
    mean = np.asarray(pred[:, voxels], dtype=np.float64).mean(axis=1)
    order = np.argsort(-mean, kind="stable")[:n_top]
    return np.asarray(nsd_ids)[order], mean[order]


def _read_images(stimuli_h5: str | Path, nsd_ids: np.ndarray) -> np.ndarray:
    return Stimuli(stimuli_h5).images(nsd_ids)


def upsample(att: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a (gh, gw) attention map to an image's (H, W), cells aligned with pixel blocks."""
    att = np.asarray(att, dtype=np.float32)
    return ndimage.zoom(
        att, (shape[0] / att.shape[0], shape[1] / att.shape[1]), order=1, grid_mode=True, mode="nearest"
    )


def roi_title(label: str) -> str:
    """Row title of a ROI: ``'lh.FFA-1'`` → ``'FFA-1 (lh)'``."""
    hemi, roi = parse_roi_label(label)
    return f"{roi} ({hemi})"


def attention_figure(
    attention_h5: str | Path,
    stimuli_h5: str | Path,
    test_pred_h5: str | Path,
    voxel_scores: pd.DataFrame,
    n_top: int = 4,
    include_rest: bool = False,
    rois: Sequence[str] | None = None,
) -> tuple[Figure, pd.DataFrame]:
    """The attention grid (see `plot_attention_maps`) and its panels: query (the ROI's label, ``lh.FFA-1``), rank,
    nsd_id, pred_mean.

    Every panel's matplotlib gid is the ROI label whose map it shows (it becomes the element id in SVG output).
    """
    predicted = read_test_predictions(test_pred_h5)
    pred_ids, pred = predicted.nsd_ids, predicted.pred
    _require(voxel_scores, ["voxel", "roi", "hemi"], "voxel scores")
    labels = voxel_labels(voxel_scores)
    with open_attention(attention_h5) as a:
        voxel_query = voxel_queries(a, labels)
        att_ids = a["nsd_ids"][()]
        shown = a["maps_head_mean"] if "maps_head_mean" in a else a["maps"]  # the plain head mean, as routing.tsv
        weighting = "plain mean over heads" if "maps_head_mean" in a else "the file's maps"
        keep = np.isin(pred_ids, att_ids)  # rank only images that have attention maps
        pred, pred_ids = pred[keep], pred_ids[keep]
        att_row = {int(n): i for i, n in enumerate(att_ids)}
        drawn = {}
        voxel_sets = roi_voxels(labels)
        for q in rois if rois is not None else voxel_sets:
            if q not in voxel_sets:
                raise BrainattError(f"no voxels in ROI {q!r} in the voxel scores (ROIs: {list(voxel_sets)[:6]}…)")
            voxels = voxel_sets[q]
            if parse_roi_label(q)[1] == "rest" and not include_rest and rois is None:
                continue
            maps = roi_attention(shown, voxel_query, voxels, np.float32)  # (N, gh, gw)
            if maps is None:  # no voxel of the ROI reads a query
                continue
            ids, means = top_images(pred, pred_ids, voxels, n_top)
            drawn[parse_roi_label(q)] = (str(q), ids, means, maps[[att_row[int(n)] for n in ids]], maps.mean(0))
    if not drawn:
        raise BrainattError(f"{attention_h5}: no ROI's voxels read an attention query: nothing to draw")
    stimuli = _read_images(stimuli_h5, np.concatenate([d[1] for d in drawn.values()]))
    images, (h, w) = iter(stimuli), stimuli.shape[1:3]
    rois = list(dict.fromkeys(roi for _, roi in drawn))
    hemis = [h for h in ("lh", "rh") if any(k[0] == h for k in drawn)]
    block = 1 + n_top
    ratios = ([1.0] * block + [0.12]) * len(hemis)  # hemisphere blocks with a gap between them
    ratios[-1] = 0.1  # the last column holds the colour bars
    width, height = 1.1 * block * len(hemis) + 1.0, 1.2 * len(rois) + 0.5
    fig, axes = plt.subplots(
        len(rois), len(ratios), figsize=(width, height), squeeze=False, gridspec_kw={"width_ratios": ratios}
    )
    # A fixed grid, not constrained layout: that took 2/3 of this figure's time (~170 panels in the demo).
    margins = {"left": 0.1 / width, "right": 1 - 0.3 / width, "bottom": 0.1 / height, "top": 1 - 0.65 / height}
    fig.subplots_adjust(**margins, wspace=0.05, hspace=0.25)
    panels = []
    for r, roi in enumerate(rois):
        entries = [(b, drawn.get((h, roi))) for b, h in enumerate(hemis)]
        uniform = max(d[3].shape[-1] * d[3].shape[-2] for _, d in entries if d)  # maps sum to 1: show × uniform
        vmax = max(float(max(d[3].max(initial=0), d[4].max())) for _, d in entries if d) * uniform
        im = None
        for b, entry in entries:
            row = axes[r, b * (block + 1) : b * (block + 1) + block]
            if entry is None:
                for ax in row:
                    ax.set_axis_off()
                continue
            q, ids, means, maps, mean_map = entry
            im = row[0].imshow(upsample(mean_map, (h, w)) * uniform, cmap="viridis", vmin=0, vmax=vmax)
            row[0].set_title(roi_title(q), fontsize=8, fontweight="bold", pad=2)
            for rank, ax in enumerate(row[1:]):
                if rank >= len(ids):
                    ax.set_axis_off()
                    continue
                img = next(images)
                ax.imshow(img)
                ax.imshow(upsample(maps[rank], (h, w)) * uniform, cmap="viridis", alpha=0.45, vmin=0, vmax=vmax)
                ax.set_title(f"#{rank + 1}  pred {means[rank]:+.2f}", fontsize=7, pad=2)
                panels.append({"query": q, "rank": rank + 1, "nsd_id": int(ids[rank]), "pred_mean": float(means[rank])})
            for ax in row:
                ax.set_gid(q)
                ax.set_xticks([])
                ax.set_yticks([])
        if im is not None:
            cb = fig.colorbar(im, cax=axes[r, -1])
            cb.ax.tick_params(labelsize=6)
    for b in range(len(hemis) - 1):
        for ax in axes[:, (b + 1) * (block + 1) - 1]:
            ax.set_axis_off()
    fig.suptitle(
        "Cross-attention of each ROI query: its mean map over the test images, then its top predicted test images\n"
        f"(colour: attention in multiples of uniform, per ROI; {weighting})",
        fontsize=9,
        y=1 - 0.1 / height,
        va="top",
    )
    return fig, pd.DataFrame(panels)


def plot_attention_maps(
    attention_h5: str | Path,
    stimuli_h5: str | Path,
    test_pred_h5: str | Path,
    voxel_scores: pd.DataFrame,
    out: str | Path,
    n_top: int = 4,
    include_rest: bool = False,
    rois: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Grid figure, one row per ROI: the mean map of what its voxels attend to, then its ``n_top`` test images
    ranked by the encoder's predicted mean response of the ROI's voxels, each overlaid with that map (viridis,
    α 0.45). With ROI queries the map is the ROI's query's; with per-voxel or hemisphere queries the mean over the
    ROI's voxels of the map of the query each reads (`attention_maps.roi_attention`).

    ``rest`` ROIs are left out unless ``include_rest`` (or named in ``rois``, labels such as ``lh.FFA-1``); ROIs
    without voxels are not drawn. Returns the panels drawn (query: the ROI label, rank, nsd_id, pred_mean).
    """
    fig, panels = attention_figure(attention_h5, stimuli_h5, test_pred_h5, voxel_scores, n_top, include_rest, rois)
    _save(fig, out)
    return panels


# --- 4. voxel scatter ----------------------------------------------------------------------------------------


def plot_voxel_scatter(
    scores_a: pd.DataFrame,
    scores_b: pd.DataFrame,
    out: str | Path,
    names: tuple[str, str] = ("transformer", "ridge_tokens"),
    value: str = "nc_norm",
) -> dict[str, int]:
    """Per-voxel ``value`` of encoder a (y) against encoder b (x), coloured by ROI family, with the identity line.

    For nc_norm only voxels with NC ≥ 5% are drawn. Returns the voxel counts above, below and on the identity.
    """
    _require(scores_a, ["voxel", "family", "nc", value], f"{names[0]} voxel scores")
    _require(scores_b, ["voxel", value], f"{names[1]} voxel scores")
    df = scores_a[["voxel", "family", "nc", value]].merge(scores_b[["voxel", value]], on="voxel", suffixes=("_a", "_b"))
    if value == "nc_norm":
        df = df[df["nc"] >= NC_MIN]
    df = df[np.isfinite(df[f"{value}_a"]) & np.isfinite(df[f"{value}_b"])]
    a, b = df[f"{value}_a"].to_numpy(), df[f"{value}_b"].to_numpy()
    counts = {"above": int((a > b).sum()), "below": int((a < b).sum()), "equal": int((a == b).sum())}

    fig, ax = plt.subplots(figsize=(4.2, 4.2), layout="constrained")
    lo = 0.0 if value.startswith("nc_norm") else min(a.min(initial=0), b.min(initial=0))
    hi = max(a.max(initial=0), b.max(initial=0), 0.1) * 1.04
    ax.plot([lo, hi], [lo, hi], color="0.3", lw=0.8, ls="--", zorder=1)
    handles = []
    for fam in _ordered(df["family"].tolist(), FAMILY_ORDER):
        sel = (df["family"] == fam).to_numpy()
        color = FAMILY_COLORS.get(fam, "0.4")
        ax.scatter(b[sel], a[sel], s=4, color=color, alpha=0.45, lw=0, rasterized=True, zorder=2)
        ax.scatter(b[sel].mean(), a[sel].mean(), s=55, color=color, edgecolor="k", lw=0.8, zorder=4)
        handles.append(Line2D([], [], ls="", marker="o", color=color, label=f"{fam} ({sel.sum()})"))
    handles.append(Line2D([], [], ls="", marker="o", mfc="w", mec="k", label="family mean"))
    n = max(len(df), 1)
    ax.text(0.03, 0.97, f"{names[0]} better: {counts['above']} ({100 * counts['above'] / n:.0f}%)",
            transform=ax.transAxes, ha="left", va="top", fontsize=8)  # fmt: skip
    ax.text(0.97, 0.03, f"{names[1]} better: {counts['below']} ({100 * counts['below'] / n:.0f}%)",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=8)  # fmt: skip
    ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal")
    label = _value_label(value)
    ax.set_xlabel(f"{names[1]}: {label}", fontsize=9)
    ax.set_ylabel(f"{names[0]}: {label}", fontsize=9)
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(0.0, 0.75), frameon=False, fontsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    if value == "nc_norm":
        ax.set_title(f"{len(df)} voxels with NC ≥ {NC_MIN:g}%", fontsize=9, loc="left")
    _save(fig, out)
    return counts


# --- entry point ---------------------------------------------------------------------------------------------


def scatter_pair(encoders: Sequence[str]) -> tuple[str, str] | None:
    """The voxel scatter's encoders: the richest one (last in `ENCODER_ORDER`) against ridge on the tokens, or
    against the simplest when ridge_tokens is not among the others; None with fewer than two encoders."""
    ordered = _ordered(list(encoders), ENCODER_ORDER)
    if len(ordered) < 2:
        return None
    rich = ordered[-1]
    return rich, "ridge_tokens" if "ridge_tokens" in ordered[:-1] else ordered[0]


def make_encoding_figures(
    out_dir: str | Path,
    *,
    table: str | Path | None = None,
    subject: str | None = None,
    encoding_dir: str | Path = "results/encoding",
    responses_h5: str | Path | None = None,
    stimuli_h5: str | Path | None = None,
    encoders: Sequence[str] = ("ridge_pooled", "ridge_tokens", "factorized", "transformer"),
    pair: tuple[str, str] | None = None,
    attention_encoder: str | None = "transformer",
    background: str | Path | None = None,
    n_top: int = 4,
) -> dict[str, Path]:
    """Write the encoding figures; returns {figure: path} (file names in `FIGURES`).

    - ``table`` (``results/tables/encoding.tsv``) → ``{out_dir}/encoding_accuracy_by_roi.png`` over all its
      subjects.
    - ``subject`` (needs ``responses_h5``; ``stimuli_h5`` for attention) → in ``{out_dir}/{subject}/``:
      ``encoding_brain_maps.png`` (one row per encoder in ``encoders``; skipped for surface data without voxel
      coordinates), ``encoding_voxel_scatter.png`` (``pair[0]`` vs ``pair[1]``, by default `scatter_pair`;
      skipped with fewer than two encoders) and, unless ``attention_encoder`` is None, ``encoding_attention.png``
      from ``{encoding_dir}/{subject}/{attention_encoder}/attention.h5``.
    """
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    if table is not None:
        written["accuracy"] = plot_accuracy_by_roi(pd.read_csv(table, sep="\t"), out_dir / FIGURES["accuracy"])
    if subject is None:
        return written
    if responses_h5 is None:
        raise BrainattError(f"figures for {subject} need its responses.h5 (results/prep/{subject}/responses.h5)")
    enc_dir = Path(encoding_dir) / subject
    sub_dir = out_dir / subject
    pair = pair or scatter_pair(encoders)
    needed = [*encoders, *(pair or ()), *([attention_encoder] if attention_encoder else [])]
    scores = {e: read_voxel_scores(enc_dir / e / VOXEL_SCORES) for e in dict.fromkeys(needed)}
    if read_responses(responses_h5, betas=False).voxels.has_volume:
        written["brain_maps"] = plot_brain_maps(
            {e: scores[e] for e in encoders}, responses_h5, sub_dir / FIGURES["brain_maps"], background
        )
    if pair is not None:
        plot_voxel_scatter(scores[pair[0]], scores[pair[1]], sub_dir / FIGURES["scatter"], names=pair)
        written["scatter"] = sub_dir / FIGURES["scatter"]
    if attention_encoder is not None:
        att = enc_dir / attention_encoder / ATTENTION
        pred = enc_dir / attention_encoder / TEST_PRED
        for path in (att, pred):
            if not path.exists():
                raise BrainattError(f"{path}: not found: run the {attention_encoder} encoder for {subject} first")
        if stimuli_h5 is None:
            raise BrainattError("the attention figure needs the stimuli (results/stimuli/images.h5)")
        plot_attention_maps(att, stimuli_h5, pred, scores[attention_encoder], sub_dir / FIGURES["attention"], n_top)
        written["attention"] = sub_dir / FIGURES["attention"]
    return written
