"""Write an nsd-synth world as an NSD on-disk tree plus a ``ground_truth/`` folder."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io
from tqdm import tqdm

from brainatt.io import atomic_path, stamp, write_json
from brainatt.metrics import add_repeats, ncsnr_from_repeats
from brainatt.nsd.layout import BETA_SCALE, NSDLayout
from brainatt.prep.responses import zscore_session
from brainatt.synth.scenes import CATEGORIES
from brainatt.synth.world import (
    GENERATOR_VERSION,
    World,
    WorldSpec,
    build_world,
    simulate_session,
    world_fingerprint,
)

log = logging.getLogger(__name__)
COCO_OFFSET = 100_000  # synthetic cocoIds, distinct from nsd ids so the join is exercised


def _save_nii(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _write_design(world: World, layout: NSDLayout) -> None:
    d = world.design
    layout.expdesign.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    scipy.io.savemat(
        buf,
        {
            "masterordering": (d.masterordering + 1)[None].astype(np.float64),
            "subjectim": (d.subjectim + 1).astype(np.float64),
            "sharedix": (d.sharedix + 1)[None].astype(np.float64),
        },
    )
    # MAT-v5's 116-byte text header carries the creation time; a fixed one keeps same-seed worlds byte-identical.
    header = b"MATLAB 5.0 MAT-file, written by brainatt nsd-synth".ljust(116)
    layout.expdesign.write_bytes(header + buf.getvalue()[116:])
    spec = world.spec
    info = pd.DataFrame(
        {
            "nsdId": np.arange(spec.n_images),
            "cocoId": np.arange(spec.n_images) + COCO_OFFSET,
            "cocoSplit": "train2017",
            "cropBox": "(0, 0, 0, 0)",
            "shared1000": np.isin(np.arange(spec.n_images), d.sharedix),
        }
    )
    for s, sub in enumerate(world.subjects):
        shown = np.zeros(spec.n_images, bool)
        shown[d.subjectim[s]] = True
        info[f"subject{s + 1}"] = shown
        trial_ids = d.subjectim[s, d.masterordering[: sub.n_trials]]
        for r in range(3):
            info[f"subject{s + 1}_rep{r}"] = 0
        seen = np.zeros(spec.n_images, int)
        for t, nsd_id in enumerate(trial_ids):
            info.loc[nsd_id, f"subject{s + 1}_rep{seen[nsd_id]}"] = t + 1
            seen[nsd_id] += 1
    info.to_csv(layout.stim_info)


def _write_stimuli(world: World, layout: NSDLayout) -> None:
    layout.stimuli.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(layout.stimuli, "w") as f:
        f.create_dataset("imgBrick", data=world.images, chunks=(1, *world.images.shape[1:]))
    layout.coco_annotations.mkdir(parents=True, exist_ok=True)
    coco = {
        "images": [{"id": i + COCO_OFFSET} for i in range(len(world.captions))],
        "annotations": [{"id": i, "image_id": i + COCO_OFFSET, "caption": c} for i, c in enumerate(world.captions)],
    }
    (layout.coco_annotations / "captions_train2017.json").write_text(json.dumps(coco))


def _write_anatomy(world: World, layout: NSDLayout, s: int, ncsnr: np.ndarray) -> None:
    """Brain mask, the subject's estimated atlases (both hemispheres and per hemisphere) and ``ncsnr`` (X,Y,Z)."""
    sub = world.subjects[s]
    a = sub.anatomy
    _save_nii(layout.brainmask(sub.name), a.brainmask.astype(np.int16), a.affine)
    x = (np.indices(a.shape).reshape(3, -1).T @ a.affine[:3, :3].T)[:, 0].reshape(a.shape) + a.affine[0, 3]
    for atlas, vol in sub.atlases.items():
        _save_nii(layout.roi(sub.name, atlas), vol, a.affine)
        for hemi, side in (("lh", x < 0), ("rh", x >= 0)):
            _save_nii(layout.roi(sub.name, atlas, hemi), np.where(side, vol, -1).astype(np.int16), a.affine)
        ctab = layout.ctab(atlas)
        if not ctab.exists():
            ctab.parent.mkdir(parents=True, exist_ok=True)
            lines = ["0 Unknown"] + [f"{k} {v}" for k, v in sorted(a.labels[atlas].items())]
            ctab.write_text("\n".join(lines) + "\n")
    _save_nii(layout.ncsnr(sub.name), ncsnr, a.affine)


def _write_betas(world: World, layout: NSDLayout, s: int) -> np.ndarray:
    """Write the subject's sessions; return ncsnr ``(X,Y,Z) float32`` estimated from the written betas as NSD does
    (z-score each voxel per session, then the across-repeat variance), for every brain voxel (0 outside)."""
    sub = world.subjects[s]
    spec = world.spec
    out = layout.betas_dir(sub.name)
    out.mkdir(parents=True, exist_ok=True)
    brain = sub.anatomy.brainmask
    row_of = np.full(spec.n_images, -1)
    row_of[world.design.subjectim[s]] = np.arange(world.design.subjectim.shape[1])
    sums = np.zeros((world.design.subjectim.shape[1], int(brain.sum())), np.float32)
    sumsq = np.zeros_like(sums)
    counts = np.zeros(len(sums), int)
    for session in tqdm(range(1, sub.n_trials // spec.trials_per_session + 1), desc=f"{sub.name} sessions"):
        vol, nsd_ids = simulate_session(world, s, session, np.random.default_rng([spec.seed, s, session]))
        data = np.clip(np.rint(vol * BETA_SCALE), -32768, 32767).astype(np.int16)
        del vol  # the session's float volume; z below takes its place
        z = data[:, brain].astype(np.float32)
        z /= BETA_SCALE
        zscore_session(z)  # in place
        rows = row_of[nsd_ids]
        add_repeats(sums, sumsq, z, rows)
        counts += np.bincount(rows, minlength=len(counts))
        if spec.betas_format == "hdf5":
            with h5py.File(out / f"betas_session{session:02d}.hdf5", "w") as f:
                zyx = data.transpose(0, 3, 2, 1)  # (trials, X,Y,Z) → h5py/MATLAB order (trials, Z,Y,X)
                f.create_dataset(
                    "betas",
                    data=zyx,
                    chunks=(zyx.shape[0], 1, *zyx.shape[2:]),
                    compression="gzip",
                    compression_opts=1,
                )
        else:
            _save_nii(out / f"betas_session{session:02d}.nii.gz", data.transpose(1, 2, 3, 0), sub.anatomy.affine)
    ncsnr = np.zeros(brain.shape, np.float32)
    ncsnr[brain] = ncsnr_from_repeats(sums, sumsq, counts)
    return ncsnr


def _write_ground_truth(world: World, gt: Path, ncsnr_r: list[float]) -> None:
    spec = world.spec
    write_json(
        gt / "world.json",
        {
            "generator_version": GENERATOR_VERSION,
            "fingerprint": world_fingerprint(spec),
            "spec": spec.as_dict(),
            "categories": list(CATEGORIES),
            "grid": spec.image_size // 4,
            "atlas_agreement": {sub.name: sub.atlas_agreement for sub in world.subjects},
            "ncsnr_file_vs_truth_r": {sub.name: r for sub, r in zip(world.subjects, ncsnr_r, strict=True)},
        },
    )
    scenes = [
        {
            "nsd_id": i,
            "place": sc.place,
            "caption": world.captions[i],
            "objects": [{"category": o.category, "cx": o.cx, "cy": o.cy, "size": o.size} for o in sc.objects],
        }
        for i, sc in enumerate(world.scenes)
    ]
    write_json(gt / "scenes.json", scenes)
    for sub in world.subjects:
        with h5py.File(gt / f"{sub.name}.h5", "w") as f:
            stamp(f, spec.as_dict(), "responses: noise-free signal, z-units over the world's images")
            f.attrs["grid"] = spec.image_size // 4
            f["responses"] = sub.responses.astype(np.float32)
            f["ncsnr"] = sub.ncsnr.astype(np.float32)
            f["ijk"] = sub.ijk
            f["kind"] = sub.kind.astype("S")
            for k, v in sub.params.as_dict().items():
                f[f"params/{k}"] = v
            f["readout/mean"] = sub.readout.mean.numpy()
            f["readout/std"] = sub.readout.std.numpy()


def write_world(spec: WorldSpec, root: str | Path) -> Path:
    """Simulate the world and write it to ``root`` (atomically: the folder appears only when complete)."""
    t0 = time.time()
    world = build_world(spec)
    root = Path(root)
    with atomic_path(root, directory=True) as tmp:
        layout = NSDLayout(tmp, space=spec.space)
        _write_design(world, layout)
        _write_stimuli(world, layout)
        ncsnr_r = []
        for s, sub in enumerate(world.subjects):
            ncsnr = _write_betas(world, layout, s)
            _write_anatomy(world, layout, s, ncsnr)
            ncsnr_r.append(float(np.corrcoef(ncsnr[tuple(sub.ijk.T)], sub.ncsnr)[0, 1]))
            log.info("%s ncsnr.nii.gz (estimated) vs true ncsnr: r = %.3f", sub.name, ncsnr_r[-1])
        _write_ground_truth(world, tmp / "ground_truth", ncsnr_r)
    log.info("wrote nsd-synth world %s to %s in %.1f s", world_fingerprint(spec), root, time.time() - t0)
    return root
