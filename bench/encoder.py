"""Transformer encoder epochs from the feature cache vs re-running the frozen backbone every step, in one run.

Subject mode (default): the demo's nsd-synth subject (``results/prep/subj01/responses.h5``, its images from
``results/stimuli/images.h5``) and the kit backbone ``kit:clip`` (last layer). Each arm runs in a fresh child
process with the same thread count (``--threads``, default 1: ``OMP_NUM_THREADS`` and ``torch.set_num_threads``):

- ``cache``: `extract_features` over the subject's training images into a feature cache in a temp dir (never
  under results/, where a running pipeline may be rewriting ``features/kit-clip.h5``); timed once, for the
  break-even point;
- ``cached``: `AttentionRoutingEncoder` (ROI queries, `build_model` defaults) trained by
  `brainatt.encoding.train.fit` on the float16 tokens read with `FeatureCache`;
- ``backbone``: the same model, seed and batches through the same `fit`, but its inputs are a lazy token view
  that runs the frozen backbone (``torch.no_grad``, eval) on the raw images of each batch, validation included,
  as the reference code did every epoch.

Both arms use the pipeline's fit/validation split (10%, seed 0) and `TrainConfig` defaults except the number of
epochs (no early stop within them). Reported: s/epoch (training + validation, from fit's history), the backbone's
share, the ratio backbone/cached, and mean validation r after each epoch in both arms with the difference (the
cache holds float16 copies of the backbone's float32 tokens, so the two should agree to ~1e-3).

``--gpu-size``: random DINOv2-base-sized tokens (31×31×768 float16) for ``--n`` images (default 9,000) in CPU
memory, as `fit` gets them from the cache; ``--queries`` (50) ROI queries over ``--voxels`` (15,724); batch 32;
validation on ``n // 10`` more images. Times ``--epochs`` epochs of `fit` on whatever device is present (on a
GPU twice: tokens staged on it by `fit`, and left in host memory with ``stage=False``) and, with
``--backbone-steps k``, k training steps that first run a randomly initialised DINOv2-base (transformers, 434 px →
31×31 tokens, float32, no_grad) on 32 random images, extrapolated to an epoch.

The tables replace the matching subsection of the "## encoder" section of bench/RESULTS.md. Wrap runs in
``flock /tmp/brainatt-bench.lock`` so benchmarks never overlap.

    flock /tmp/brainatt-bench.lock python bench/encoder.py                       # subject mode, 3 epochs
    flock /tmp/brainatt-bench.lock python bench/encoder.py --gpu-size            # on a GPU machine
    python bench/encoder.py --gpu-size --n 256 --epochs 1 --no-record            # CPU smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS, code_version, machine, report

HEADING = "## encoder"
ROOT = Path(__file__).resolve().parents[1]
RESPONSES = ROOT / "results/prep/subj01/responses.h5"
STIMULI = ROOT / "results/stimuli/images.h5"
BACKBONE = "kit:clip"
TARGET_RATIO = 10.0
TIMED_CODE = ("brainatt/encoding", "brainatt/features/cache.py", "brainatt/models/loading.py")


# ---------------------------------------------------------------------------------------------------- children
def _torch_setup(threads: int) -> Any:
    import torch

    torch.set_num_threads(threads)
    return torch


class BackboneTokens:
    """A token tensor stand-in for `fit`/`predict`: indexing runs the frozen backbone on those raw images.

    ``seconds`` accumulates the time spent in the backbone (and the uint8 → float conversion).
    """

    def __init__(self, backbone: Any, images: np.ndarray, layer: int, device: str) -> None:
        self.backbone, self.images, self.layer, self.device = backbone, images, layer, device
        self.seconds = 0.0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: Any) -> Any:
        import torch

        from brainatt.images import images_to_tensor

        t0 = time.perf_counter()
        rows = idx.numpy() if isinstance(idx, torch.Tensor) else idx
        with torch.no_grad():
            tokens = self.backbone(images_to_tensor(self.images[rows]).to(self.device))[self.layer]
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        return tokens


def child_cache(workdir: Path, threads: int) -> None:
    """Write the subject's training images to ``workdir/images.h5`` and time `extract_features` on them."""
    torch = _torch_setup(threads)
    import h5py

    from brainatt.encoding.data import load_subject
    from brainatt.features.cache import extract_features
    from brainatt.io import read_by_nsd_id
    from brainatt.models.loading import ModelSpec, load_backbone

    ids = load_subject(RESPONSES).train_ids
    images = read_by_nsd_id(STIMULI, "images", ids, "the stimuli file", "rerun the stimuli rule")
    with h5py.File(workdir / "images.h5", "w") as f:
        f["images"], f["nsd_ids"] = images, ids
    device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = ModelSpec(role="backbone", name=BACKBONE, layers=(-1,))
    backbone = load_backbone(spec)
    size = {"params": sum(p.numel() for p in backbone.parameters()), "image_size": list(backbone.image_size)}
    t0 = time.perf_counter()
    extract_features(workdir / "images.h5", spec, workdir / "features.h5", batch=64, device=device)
    print(json.dumps({"seconds": time.perf_counter() - t0, "images": len(ids), "device": device, **size}))


def child_arm(arm: str, workdir: Path, epochs: int, threads: int) -> None:
    """Train the subject's encoder for ``epochs`` with cached (``cached``) or live (``backbone``) tokens."""
    torch = _torch_setup(threads)
    import h5py

    from brainatt.contracts.features import FeatureCache
    from brainatt.encoding.data import load_subject, validation_split
    from brainatt.encoding.encoders import build_model
    from brainatt.encoding.train import TrainConfig, fit
    from brainatt.models.loading import ModelSpec, load_backbone

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sub = load_subject(RESPONSES)
    cache = FeatureCache(workdir / "features.h5")
    fit_idx, val_idx = validation_split(len(sub.train_ids), 0.1, 0)
    y = torch.from_numpy(sub.train_y)
    layer = cache.layers[-1]
    if arm == "cached":
        x = torch.from_numpy(cache.tokens(layer, sub.train_ids))
        x_fit, x_val, width, live = x[fit_idx], x[val_idx], x.shape[-1], None
    else:
        backbone = load_backbone(ModelSpec(role="backbone", name=BACKBONE, layers=(-1,)), device=device)
        with h5py.File(workdir / "images.h5", "r") as f:
            assert np.array_equal(f["nsd_ids"][()], sub.train_ids)
            images = f["images"][()]
        x_fit = live = BackboneTokens(backbone, images[fit_idx], -1, device)
        x_val = BackboneTokens(backbone, images[val_idx], -1, device)
        width = x_val[:1].shape[-1]
        x_val.seconds = 0.0
    torch.manual_seed(0)
    model, queries = build_model("transformer", {}, sub, cache.grid, width)
    cfg = TrainConfig(epochs=epochs, patience=epochs + 1, seed=0)
    _, best_r, history = fit(model.to(device), x_fit, y[fit_idx], x_val, sub.train_y[val_idx], cfg, arm)
    np.save(workdir / f"val_r_{arm}.npy", best_r)
    backbone_s = (live.seconds + x_val.seconds) / epochs if live is not None else 0.0
    out = {
        "history": history,
        "backbone_s_per_epoch": backbone_s,
        "queries": len(queries),
        "voxels": sub.n_voxels,
        "fit": len(fit_idx),
        "val": len(val_idx),
        "grid": list(cache.grid),
        "width": int(width),
        "device": device,
    }
    print(json.dumps(out))


def child_gpu_size(args: argparse.Namespace) -> None:
    """Random DINOv2-base-sized tokens: time `fit` epochs and (optionally) live-backbone steps."""
    torch = _torch_setup(args.threads)
    from torch import nn

    from brainatt.encoding.train import TrainConfig, fit, predict, stage_inputs
    from brainatt.encoding.transformer import AttentionRoutingEncoder

    device = "cuda" if torch.cuda.is_available() else "cpu"
    grid, width, n_val = (31, 31), 768, max(1, args.n // 10)
    gen = torch.Generator(device).manual_seed(0)
    t0 = time.perf_counter()

    def tokens(n: int) -> Any:  # built in blocks on the device, kept in CPU memory as fit expects
        out = torch.empty((n, *grid, width), dtype=torch.float16)
        for i in range(0, n, 256):
            m = min(256, n - i)
            out[i : i + m] = torch.randn((m, *grid, width), generator=gen, device=device, dtype=torch.float16).cpu()
        return out

    x_fit, x_val = tokens(args.n), tokens(n_val)
    y_fit = torch.randn((args.n, args.voxels), generator=gen, device=device).cpu()
    y_val = torch.randn((n_val, args.voxels), generator=gen, device=device).cpu().numpy()
    make_s = time.perf_counter() - t0
    voxel_query = np.random.default_rng(0).integers(0, args.queries, args.voxels)
    cfg = TrainConfig(epochs=args.epochs, batch=args.batch, patience=args.epochs + 1, seed=0)

    def timed_fit(stage: bool) -> tuple[Any, list[dict], float]:
        torch.manual_seed(0)
        model = AttentionRoutingEncoder(voxel_query, args.queries, grid, width).to(device)
        _, _, history = fit(model, x_fit, y_fit, x_val, y_val, cfg, "gpu-size", stage=stage)
        staged = stage_inputs(torch.device(device), x_val)[0] if stage else x_val
        t0 = time.perf_counter()
        predict(model, staged)
        return model, history, time.perf_counter() - t0

    model, history, val_s = timed_fit(stage=True)
    out: dict[str, Any] = {
        "history": history,
        "val_s": val_s,
        "make_s": make_s,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else machine(versions()).split(",")[0],
        "params": sum(p.numel() for p in model.parameters()),
        "heads": model.layers[0].heads,
    }
    if device == "cuda":  # staging is a no-op on the CPU
        _, out["host_history"], out["host_val_s"] = timed_fit(stage=False)
    if args.backbone_steps:
        from transformers import Dinov2Config, Dinov2Model

        size = grid[0] * 14
        dino = Dinov2Model(Dinov2Config(image_size=size)).to(device).eval().requires_grad_(False)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        model.train()
        steps = []
        for step in range(args.backbone_steps + 1):  # the first step warms up (allocator, kernels) and is dropped
            t0 = time.perf_counter()
            images = torch.rand((args.batch, 3, size, size), generator=gen, device=device)
            with torch.no_grad():
                hidden = dino(pixel_values=images).last_hidden_state[:, 1:].unflatten(1, grid)
            loss = nn.functional.mse_loss(model(hidden), y_fit[: args.batch].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            loss.item()
            if step:
                steps.append(time.perf_counter() - t0)
        out["backbone_step_s"] = steps
    print(json.dumps(out))


def run_child(argv: list[str], threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, *argv, "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{shlex.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


# ------------------------------------------------------------------------------------------------------ report


def header(title: str, load_before: tuple[float, ...], threads: int) -> list[str]:
    load = " ".join(f"{x:.2f}" for x in load_before) + " → " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"### {title}",
        "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; code: {code_version(TIMED_CODE)}",
        f"- machine: {machine(versions())}; {threads} thread(s) per arm (OMP_NUM_THREADS, torch.set_num_threads)",
        f"- load average (1, 5, 15 min) at start → end: {load} (other work on the machine slows every arm)",
        f"- command: `{shlex.join(['python', 'bench/encoder.py', *sys.argv[1:]])}`",
    ]


def subject_section(args: argparse.Namespace) -> str:
    for path in (RESPONSES, STIMULI):
        if not path.exists():
            sys.exit(
                f"{path} missing: make the demo subject first, from the repository root:\n"
                "    snakemake --cores 2 results/prep/subj01/responses.h5 results/stimuli/images.h5"
            )
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-encoder-") as tmp:
        workdir = Path(tmp)
        base = ["--workdir", str(workdir), "--epochs", str(args.epochs)]
        cache = run_child(["--child", "cache", *base], args.threads)
        print(f"cache: {cache['images']} images in {cache['seconds']:.1f} s", file=sys.stderr)
        arms = {}
        for arm in ("cached", "backbone"):
            arms[arm] = run_child(["--child", arm, *base], args.threads)
            s = [h["s"] for h in arms[arm]["history"]]
            print(f"{arm}: s/epoch {', '.join(f'{v:.2f}' for v in s)}", file=sys.stderr)
        r_cached, r_live = (np.load(workdir / f"val_r_{arm}.npy") for arm in ("cached", "backbone"))
    info = arms["cached"]
    med = {arm: statistics.median(h["s"] for h in a["history"]) for arm, a in arms.items()}
    ratio = med["backbone"] / med["cached"]
    lines = [
        "| arm | s/epoch (median) | epochs s | backbone s/epoch | × cached | val r per epoch | "
        "val r after last epoch | target |",
        "|---|---:|---|---:|---:|---|---:|---|",
    ]
    for arm, a in arms.items():
        hist = a["history"]
        verdict = ("met" if ratio >= TARGET_RATIO else "missed") if arm == "backbone" else ""
        secs, rs = (", ".join(f"{h[key]:{fmt}}" for h in hist) for key, fmt in (("s", ".2f"), ("val_r", ".4f")))
        lines.append(
            f"| {arm} | {med[arm]:.2f} | {secs} | {a['backbone_s_per_epoch']:.2f} | {med[arm] / med['cached']:.1f} | "
            f"{rs} | {hist[-1]['val_r']:.4f} | {verdict} |"
        )
    diffs = [abs(a["val_r"] - b["val_r"]) for a, b in zip(*(x["history"] for x in arms.values()), strict=True)]
    best = [int(np.argmax([h["val_r"] for h in a["history"]])) for a in arms.values()]
    epochs_to_pay = cache["seconds"] / max(med["backbone"] - med["cached"], 1e-9)
    notes = [
        f"problem: nsd-synth subj01, {info['voxels']:,} voxels, {info['queries']} ROI queries, {BACKBONE} last "
        f"layer ({info['grid'][0]}×{info['grid'][1]}×{info['width']} tokens); fit on {info['fit']:,} training "
        f"images, validation on {info['val']:,} (the pipeline's 10% split, seed 0); `TrainConfig` defaults (batch "
        f"32, AdamW lr 2e-3, clip 0.1), {args.epochs} epoch(s), seed 0 in both arms; device {info['device']}",
        "s/epoch: one epoch of `brainatt.encoding.train.fit` (training steps + validation predictions), from its "
        "history; backbone s/epoch: the part spent running the backbone; × cached: median s/epoch / cached median",
        f"**ratio backbone / cached: {ratio:.1f}×** (the target, ≥ {TARGET_RATIO:.0f}× at equal accuracy, is "
        f"stated for DINOv2-base tokens on a GPU; the kit backbone has {cache['params'] / 1e6:.1f} M parameters and "
        f"sees {cache['image_size'][0]} px images, so here it is a small part of a step and the ratio says little "
        "about that target: see the gpu-size table)",
        f"equal accuracy: |Δ mean val r| per epoch {', '.join(f'{d:.1e}' for d in diffs)} (max {max(diffs):.1e}); "
        f"per voxel at each arm's best epoch (epochs {best[0] + 1} and {best[1] + 1}): max |Δr| "
        f"{np.abs(r_cached - r_live).max():.1e}, mean |Δr| {np.abs(r_cached - r_live).mean():.1e}",
        f"the cache itself: `extract_features` over the {cache['images']:,} training images took "
        f"{cache['seconds']:.1f} s once (pays for itself after {epochs_to_pay:.1f} epochs of one model)",
    ]
    title = f"nsd-synth subj01, {BACKBONE} tokens: cached vs backbone every step"
    return "\n".join([*header(title, load_before, args.threads), *(f"- {n}" for n in notes), "", *lines, ""])


def gpu_section(args: argparse.Namespace) -> str:
    load_before = os.getloadavg()
    argv = ["--child", "gpu-size", "--n", str(args.n), "--epochs", str(args.epochs), "--batch", str(args.batch)]
    argv += ["--queries", str(args.queries), "--voxels", str(args.voxels), "--backbone-steps", str(args.backbone_steps)]
    res = run_child(argv, args.threads)
    hist = res["history"]
    s = [h["s"] for h in hist]
    steps = -(-args.n // args.batch)
    label = "GPU" if res["device"] == "cuda" else "CPU: the GPU s/epoch is not measured yet"
    cached_step = (statistics.median(s) - res["val_s"]) / steps
    lines = [
        "| device | images | epochs s (train + val) | validation s | s/epoch train only (median) | s/step | × cached |",
        "|---|---:|---|---:|---:|---:|---:|",
        f"| {res['device_name']} ({res['device']}{', tokens staged on it' if res.get('host_history') else ''}) | "
        f"{args.n:,} | {', '.join(f'{v:.2f}' for v in s)} | "
        f"{res['val_s']:.2f} | {statistics.median(s) - res['val_s']:.2f} | {cached_step:.3f} | 1.0 |",
    ]
    if res.get("host_history"):
        host = [h["s"] for h in res["host_history"]]
        host_step = (statistics.median(host) - res["host_val_s"]) / steps
        lines.append(
            f"| same, tokens in host memory (copied every batch) | {args.n:,} | {', '.join(f'{v:.2f}' for v in host)}"
            f" | {res['host_val_s']:.2f} | {statistics.median(host) - res['host_val_s']:.2f} | {host_step:.3f} | "
            f"{host_step / cached_step:.1f} |"
        )
    if res.get("backbone_step_s"):
        step = statistics.median(res["backbone_step_s"])
        lines.append(
            f"| same, DINOv2-base run every step ({len(res['backbone_step_s'])} steps timed, extrapolated) | "
            f"{args.n:,} | — | — | {step * steps:.2f} | {step:.3f} | {step / cached_step:.1f} |"
        )
    notes = [
        f"**{label}**",
        f"problem: random tokens 31×31×768 float16 for {args.n:,} training + {max(1, args.n // 10):,} validation "
        f"images in CPU memory (as `fit` gets them from `FeatureCache`), {args.queries} queries, "
        f"{args.voxels:,} voxels, batch {args.batch}, `AttentionRoutingEncoder` defaults (width 768, depth 1, "
        f"{res['heads']} heads, ff 512; {res['params']:,} parameters), `fit` with `TrainConfig` defaults otherwise; "
        f"the random data took {res['make_s']:.1f} s to make (not timed)",
        "epochs s: one epoch of `fit` each (steps + validation predictions); validation s: `predict` on the "
        "validation tokens once more after training; train only = median epoch − validation s",
    ]
    if res.get("host_history"):
        notes.append(
            "staged: `fit` copies the tokens to the GPU once (`stage_inputs`, when they take at most half its free "
            "memory); host memory: the same model, seed and batches with `fit(..., stage=False)`"
        )
    if res.get("backbone_step_s"):
        notes.append(
            "DINOv2-base row: randomly initialised `Dinov2Model` (transformers defaults = base, 434 px → 31×31), "
            f"float32, no_grad, on {args.batch} random images, then the same training step; median step × steps per "
            "epoch (validation not included)"
        )
    title = f"gpu-size: DINOv2-base-sized tokens, {res['device']}"
    return "\n".join([*header(title, load_before, args.threads), *(f"- {n}" for n in notes), "", *lines, ""])


def versions() -> str:
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"torch {torch.__version__}, {gpu}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3, help="epochs per arm (subject) or timed epochs (gpu-size)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per arm")
    p.add_argument("--gpu-size", action="store_true", help="time DINOv2-base-sized random tokens instead")
    p.add_argument("--n", type=int, default=9000, help="gpu-size: training images")
    p.add_argument("--queries", type=int, default=50, help="gpu-size: queries")
    p.add_argument("--voxels", type=int, default=15_724, help="gpu-size: voxels")
    p.add_argument("--batch", type=int, default=32, help="gpu-size: batch size")
    p.add_argument("--backbone-steps", type=int, default=0, help="gpu-size: also time k steps with DINOv2-base")
    p.add_argument("--no-record", action="store_true", help=f"print the table only; leave {RESULTS.name} alone")
    p.add_argument("--child", choices=("cache", "cached", "backbone", "gpu-size"), help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == "cache":
        child_cache(args.workdir, args.threads)
    elif args.child in ("cached", "backbone"):
        child_arm(args.child, args.workdir, args.epochs, args.threads)
    elif args.child == "gpu-size":
        child_gpu_size(args)
    else:
        text = gpu_section(args) if args.gpu_size else subject_section(args)
        report(args, HEADING, text, "gpu-size" if args.gpu_size else "nsd-synth")


if __name__ == "__main__":
    main()
