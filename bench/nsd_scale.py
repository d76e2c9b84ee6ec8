"""NSD scale by simulation: nsd-synth shaped like NSD through preprocess, stimuli, features and ridge, each stage
timed (wall, CPU = user + sys), its peak memory and its disk, then projected to all of NSD.

NSD: 8 subjects, 40 sessions of 750 trials each (30,000 trials, 10,000 images seen 3 times: 9,000 own, 1,000
shared), 73,000 images in all, 425-px stimuli, 81 × 104 × 83 volumes (func1pt8mm) with ~15,000 nsdgeneral voxels.
The bench runs a reduced subset of one subject (``--train``/``--shared`` images, hence 3·(train + shared)/750
sessions) with the full volume and voxel count:

- the world is written by the simulator (`brainatt synthesize`) at 2.2 mm (≈15,000 nsdgeneral voxels) and 64 px,
  then embedded in an 81 × 104 × 83 field of view (brain mask, ROIs, ncsnr and every session's betas, uncompressed
  int16 like NSD's files), so preprocessing reads NSD-sized sessions, and its images are enlarged to 424 px
  (bicubic; rendering and simulating the brain at 424 px is what the simulator cannot do on a small machine);
- each stage is the `brainatt` command its rule runs, in its own process under ``/usr/bin/time -v`` (one thread
  for preprocess, stimuli and ridge, two for features, as the rules declare);
- features use an open_clip ViT-B/16 with random weights (the cost of the real one: same architecture, 224 px);
- ridge is `ridge_pooled` (`RidgeCV`, per-voxel α, 5 folds, on the 512-d pooled embedding of every voxel).

Projection to NSD is linear in what each stage iterates over (stated in the table): sessions for preprocess,
images for stimuli and features (73,000 for the whole dataset, once), training images for ridge (9,000 per
subject); subjects multiply the per-subject stages by 8. Peak memory of preprocess is projected from its per-image
arrays (three (images × voxels) float32 arrays: repeat sums, sums of squares, means), the rest is measured.

    python bench/nsd_scale.py                           # 1,000 images (4 sessions, 4.2 GB of betas)
    python bench/nsd_scale.py --train 150 --shared 100  # 250 images, one session (~20 min on 2 loaded cores)

Needs ~2 GB of memory and 1.2 GB of disk per session in the work folder. Wrap it in
``flock /tmp/brainatt-bench.lock`` on a shared machine so that benchmarks never overlap.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
from common import ROOT, code_version, machine, report

HEADING = "## nsd_scale"
NSD = {"subjects": 8, "sessions": 40, "images": 10_000, "train": 9_000, "all_images": 73_000}
FOV = (81, 104, 83)  # func1pt8mm (X, Y, Z)
TIMED = ("brainatt/prep", "brainatt/nsd", "brainatt/contracts", "brainatt/features", "brainatt/encoding")
BACKBONE = {"name": "ViT-B-16", "source": "open_clip", "layers": [-1]}
RIDGE = {"ridge": {"folds": 5}}


def embed(root: Path, subject: str) -> tuple[int, ...]:
    """Place the subject's volumes in an NSD-sized field of view (centred), rewriting betas uncompressed."""
    ppdata = root / "nsddata/ppdata" / subject / "func1pt8mm"
    betas = root / "nsddata_betas/ppdata" / subject / "func1pt8mm/betas_fithrf_GLMdenoise_RR"
    shape = nib.load(ppdata / "brainmask.nii.gz").shape
    if any(s > f for s, f in zip(shape, FOV, strict=True)):
        raise SystemExit(f"volume {shape} does not fit in {FOV}: use a coarser voxel_mm")
    lo = [(f - s) // 2 for s, f in zip(shape, FOV, strict=True)]
    where = tuple(slice(a, a + s) for a, s in zip(lo, shape, strict=True))
    for path in [*ppdata.rglob("*.nii.gz"), betas / "ncsnr.nii.gz"]:
        img = nib.load(path)
        data = np.asarray(img.dataobj)
        fill = -1 if data.min() < 0 else 0
        out = np.full(FOV, fill, data.dtype)
        out[where] = data
        affine = img.affine.copy()
        affine[:3, 3] -= affine[:3, :3] @ np.array(lo)
        nib.save(nib.Nifti1Image(out, affine), str(path))
    for path in sorted(betas.glob("betas_session*.hdf5")):
        with h5py.File(path) as f:
            data = f["betas"][()]  # (trials, Z, Y, X)
        out = np.zeros((len(data), *FOV[::-1]), np.int16)
        out[:, where[2], where[1], where[0]] = data
        with h5py.File(path, "w") as f:
            f.create_dataset("betas", data=out)  # contiguous, uncompressed: NSD's layout
    return FOV


def enlarge(root: Path, size: int) -> None:
    """The imgBrick's images resized to ``size`` px (bicubic), stored as NSD stores them (one chunk per image)."""
    from PIL import Image

    path = root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
    with h5py.File(path) as f:
        small = f["imgBrick"][()]
    big = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in small])
    with h5py.File(path, "w") as f:
        f.create_dataset("imgBrick", data=big, chunks=(1, size, size, 3))


def timed(name: str, cmd: list[str], workdir: Path, threads: int) -> dict:
    """Run ``cmd`` under /usr/bin/time -v with ``threads`` BLAS/torch threads: wall s, CPU s, peak RSS GB."""
    report_file = workdir / f"{name}.time"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    t0 = time.time()
    run = subprocess.run(["/usr/bin/time", "-v", "-o", str(report_file), *cmd], env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if run.returncode:
        raise SystemExit(f"{name} failed:\n{run.stderr[-3000:]}")
    text = report_file.read_text()

    def field(label: str) -> float:
        return float(re.search(rf"{label}: ([\d.]+)", text).group(1))

    cpu = field(r"User time \(seconds\)") + field(r"System time \(seconds\)")
    return {"stage": name, "wall": wall, "cpu": cpu, "rss": field(r"Maximum resident set size \(kbytes\)") / 2**20}


def torch_version() -> str:
    import torch

    return torch.__version__


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=900, help="subject-specific images (NSD: 9,000)")
    ap.add_argument("--shared", type=int, default=100, help="shared test images (NSD: 1,000)")
    ap.add_argument("--voxel-mm", type=float, default=2.2, help="2.2 mm gives ~15,000 nsdgeneral voxels")
    ap.add_argument("--image-size", type=int, default=424, help="stimulus size (NSD: 425)")
    ap.add_argument("--workdir", help="keep the files here (default: a temporary folder, removed)")
    ap.add_argument("--no-record", action="store_true", help="print the table only")
    args = ap.parse_args()
    n_img = args.train + args.shared
    if 3 * n_img % 750:
        raise SystemExit("3·(train + shared) must be a multiple of 750 (NSD's trials per session)")
    sessions = 3 * n_img // 750
    load0 = os.getloadavg()
    start = datetime.datetime.now(datetime.UTC)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="nsd-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    brainatt = [sys.executable, "-m", "brainatt"]
    spec = {
        "seed": 0,
        "n_subjects": 1,
        "n_train": args.train,
        "n_shared": args.shared,
        "image_size": 64,
        "trials_per_session": 750,
        "sessions_kept": [1.0],
        "subject_scale": [1.0],
        "voxel_mm": args.voxel_mm,
    }
    root, res = work / "nsd", work / "results"
    rows = []
    if not root.exists():
        synth = timed("synthesize", [*brainatt, "synthesize", "--spec", json.dumps(spec), "--out", str(root)], work, 1)
        synth["disk"] = size(root)
        embed(root, "subj01")
        enlarge(root, args.image_size)
        rows.append(synth)
    betas = root / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    betas_bytes = sum(p.stat().st_size for p in betas.glob("betas_session*.hdf5"))
    kit = str(ROOT / "brainatt/kit")
    stages = [
        ("preprocess", 1, res / "prep/subj01/responses.h5", ["preprocess", "--root", str(root), "--subject", "subj01"]),
        ("stimuli", 1, res / "stimuli/images.h5", ["stimuli", "--root", str(root), "--subjects", "subj01"]),
        (
            "features",
            2,
            res / "features/backbone.h5",
            [
                *f"features --role backbone --stimuli {res / 'stimuli/images.h5'} --kit {kit}".split(),
                "--model",
                json.dumps(BACKBONE),
            ],
        ),
        (
            "ridge",
            1,
            res / "encoding/subj01/ridge_pooled",
            [
                *f"encode --responses {res / 'prep/subj01/responses.h5'}".split(),
                *f"--features {res / 'features/backbone.h5'}".split(),
                "--encoder",
                "ridge_pooled",
                "--config",
                json.dumps(RIDGE),
            ],
        ),
    ]
    for name, threads, out, cmd in stages:
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        out.parent.mkdir(parents=True, exist_ok=True)
        row = timed(name, [*brainatt, *cmd, "--out", str(out)], work, threads)
        row["disk"] = size(out)
        rows.append(row)
        print(row, flush=True)
    with h5py.File(res / "prep/subj01/responses.h5") as f:
        n_vox = f["voxels/ijk"].shape[0]
        n_seen = len(f["train/nsd_ids"]) + len(f["test/nsd_ids"])
        n_train = len(f["train/nsd_ids"])
    with h5py.File(res / "stimuli/images.h5") as f:
        stim = f["images"]
        raw_image = int(np.prod(stim.shape[1:]))
        n_stim = len(stim)
    text = table(rows, args, sessions, n_vox, n_seen, n_train, n_stim, raw_image, betas_bytes)
    text += f"\n- load average (1, 5, 15 min) at start → end: {' '.join(f'{x:.2f}' for x in load0)} → "
    text += " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = f"- date: {start:%Y-%m-%d %H:%M} UTC; package code: {code_version(TIMED)}\n" + text
    head = (
        f"{HEADING}\n\nnsd-synth shaped like NSD through the per-subject stages (`bench/nsd_scale.py`): one subject,"
        " a reduced number of sessions and images at NSD's volume, voxel count and image size; measured, then"
        " projected to all of NSD.\n\n"
        f"- machine: {machine(f'torch {torch_version()}, h5py {h5py.__version__}')}; "
        "shared with other work (CPU time is the number to compare)\n"
        f"- command: `python bench/nsd_scale.py --train {args.train} --shared {args.shared}`\n"
    )
    report(args, HEADING, head + text, None)
    if not args.workdir:
        shutil.rmtree(work)


def table(
    rows: list[dict],
    args: argparse.Namespace,
    sessions: int,
    n_vox: int,
    n_seen: int,
    n_train: int,
    n_stim: int,
    raw_image: int,
    betas_bytes: int,
) -> str:
    """The measured rows and their projection to NSD (per subject and for all 8)."""
    scale = {
        "synthesize": (None, "—"),
        "preprocess": (NSD["sessions"] / sessions, f"sessions ×{NSD['sessions'] / sessions:.1f}, per subject"),
        "stimuli": (NSD["all_images"] / n_stim, f"images ×{NSD['all_images'] / n_stim:.0f}, once for all"),
        "features": (NSD["all_images"] / n_stim, f"images ×{NSD['all_images'] / n_stim:.0f}, once for all"),
        "ridge": (NSD["train"] / n_train, f"training images ×{NSD['train'] / n_train:.1f}, per subject"),
    }
    per_image_prep = 3 * 4 * n_vox  # bytes of the three (images × voxels) float32 arrays per image
    lines = [
        f"- subset: 1 subject, {sessions} sessions × 750 trials, {n_seen:,} images seen ({n_train:,} training), "
        f"{n_vox:,} nsdgeneral voxels in an {'×'.join(map(str, FOV))} volume ({args.voxel_mm} mm), "
        f"{args.image_size}-px images; betas on disk {betas_bytes / 1e9:.2f} GB "
        f"({betas_bytes / sessions / 1e9:.2f} GB per session, uncompressed int16 like NSD's)",
        "- projection: linear in what each stage iterates over (column `scales with`); NSD = 8 subjects × 40 "
        "sessions, 10,000 images each (9,000 training), 73,000 images in all; preprocess peak memory adds "
        f"3 × 4 B × {n_vox:,} voxels per extra image (its per-image sums, squares and means), ridge's 2 × 4 B × "
        "voxels per extra training image (responses and their centred copy); other peaks are per batch or per "
        "session and stay as measured; ridge's disk is its (features × voxels) weights plus test predictions for "
        "1,000 images",
        "",
        "| stage | threads | wall s | CPU s | peak RSS GB | output GB | scales with | NSD CPU h | NSD wall h (2 cores) "
        "| NSD peak RSS GB | NSD disk GB |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    threads = {"synthesize": 1, "preprocess": 1, "stimuli": 1, "features": 2, "ridge": 1}
    total_cpu = total_disk = 0.0
    for r in rows:
        factor, how = scale[r["stage"]]
        measured = (
            f"| {r['stage']} | {threads[r['stage']]} | {r['wall']:.0f} | {r['cpu']:.0f} | {r['rss']:.2f} | "
            f"{r['disk'] / 1e9:.3f} | {how} |"
        )
        if factor is None:
            lines.append(measured + " | | | |")
            continue
        subjects = NSD["subjects"] if "per subject" in how else 1
        cpu_h = r["cpu"] * factor * subjects / 3600
        wall_h = cpu_h / threads[r["stage"]] if threads[r["stage"]] > 1 else cpu_h / 2  # 2 jobs at once otherwise
        if r["stage"] == "preprocess":
            rss = r["rss"] + per_image_prep * (NSD["images"] - n_seen) / 2**30
        elif r["stage"] == "ridge":  # + the training responses and their centred copy (float32)
            rss = r["rss"] + 2 * 4 * n_vox * (NSD["train"] - n_train) / 2**30
        else:
            rss = r["rss"]
        disk = r["disk"] * factor * subjects / 1e9
        if r["stage"] == "ridge":  # weights are (features × voxels) whatever n; test predictions grow to 1,000 images
            disk = (r["disk"] + 4 * n_vox * (NSD["images"] - NSD["train"] - (n_seen - n_train))) * subjects / 1e9
        total_cpu += cpu_h
        total_disk += disk
        lines.append(measured + f" {cpu_h:.1f} | {wall_h:.1f} | {rss:.1f} | {disk:,.0f} |")
    lines.append(f"| **all four stages** | | | | | | | **{total_cpu:.1f}** | | | **{total_disk:,.0f}** |")
    lines.append(
        f"\n- stimuli: {raw_image / 1e3:.0f} kB per image uncompressed; images.h5 holds "
        f"{rows[[r['stage'] for r in rows].index('stimuli')]['disk'] / n_stim / 1e3:.1f} kB per image"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
