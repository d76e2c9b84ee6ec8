"""Brain-guided vs unguided sampling time per image at equal steps and batch (`bench/RESULTS.md`, "braindive").

Arms, each in its own process (so its peak RSS is its own): ``unguided``; ``reuse`` (guided, the guidance pass's
ε is the step's: one UNet forward + backward per step); ``two-pass`` (guided, a separate gradient-free forward
gives the step's ε, the reference's order); ``x0`` (guided, the approximate gradient: taken at x̂₀ with the UNet's
Jacobian dropped, no UNet backward); ``window`` (``reuse`` on the first ``--window`` share of the steps only, the
rest unguided: `sample`'s ``guide_window``). Settings:

- ``kit``: the shipped kit diffusion (pixel space, 64 px) guided by the demo's saved ``ridge_pooled`` encoder of
  subj01 (``--encoder``); the demo's batch and steps. Target: guided / unguided ≤ 2.5 with ε reuse.
- ``paper``: the paper's sizes with random weights: the SD-2.1-base UNet and VAE (512 px, 64×64 latents,
  backpropagated through the full decoder) and a ViT-B/16 CLIP image tower with a unit-norm 512 → 1,000-voxel
  linear head; batch 4, a couple of steps (CPU: s/step and peak memory only).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import time
from datetime import UTC, datetime

import numpy as np
import torch
from torch import nn

from bench.common import code_version, machine, report

HEADING = "## braindive"
TIMED = ("brainatt/models/diffusion.py", "brainatt/braindive/objective.py")
ARMS = ("unguided", "reuse", "window", "two-pass", "x0")


class ClipHead(nn.Module):
    """ViT-B/16 image embedding, unit-normalised, then a linear voxel head (BrainDiVE's encoder), random weights."""

    def __init__(self, n_voxels: int = 1000) -> None:
        super().__init__()
        from brainatt.models.architectures import random_model

        self.visual = random_model("backbone", "ViT-B-16").eval().requires_grad_(False)
        self.head = nn.Linear(512, n_voxels).requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None])
        self.register_buffer("std", torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False)
        e = self.visual((x - self.mean) / self.std)
        return self.head(e / e.norm(dim=1, keepdim=True))


def _arm(
    setting: str, arm: str, steps: int, batch: int, encoder_dir: str, threads: int, device: str, window: float
) -> dict:
    torch.set_num_threads(threads)
    from brainatt.braindive.objective import RoiObjective
    from brainatt.models.diffusion import sample

    torch.manual_seed(0)
    if setting == "kit":
        from brainatt.encoding.encoders import load_image_encoder
        from brainatt.models.loading import load_diffusion
        from brainatt.models.spec import ModelSpec

        model = load_diffusion(ModelSpec(role="diffusion", name="kit:diffusion", source="diffusers"), device)
        encoder = load_image_encoder(encoder_dir, device)
        size, scheduler = 64, "dpm++2m"
    else:
        from brainatt.models.architectures import random_model

        model = random_model("diffusion", "sd-2.1-base", device)
        model.unet.eval().requires_grad_(False)
        model.vae.eval().requires_grad_(False)
        encoder = ClipHead().to(device)
        size, scheduler = None, "dpm++2m"
    n_voxels = encoder(torch.zeros(1, 3, 64, 64, device=device)).shape[1]
    target = np.zeros(n_voxels, bool)
    target[: n_voxels // 10] = True
    guide = RoiObjective(encoder, target, max_shift=4).to(device) if arm != "unguided" else None
    kw = {"steps": steps, "seeds": list(range(batch)), "image_size": size, "scheduler": scheduler}
    if device == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    grad = "x0" if arm == "x0" else "unet"
    kw["guide_window"] = (0.0, window if arm == "window" else 1.0)
    sample(model, None, guide=guide, guide_scale=100.0, reuse_eps=arm != "two-pass", guide_grad=grad, **kw)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB → GB
    return {"setting": setting, "arm": arm, "s": seconds, "cpu_s": cpu, "peak_gb": peak}


def run(*args: object) -> dict:
    """`_arm` in a fresh process."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_arm, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["kit", "paper"], choices=["kit", "paper"])
    parser.add_argument("--encoder", default="results/encoding/subj01/ridge_pooled", help="kit setting's encoder")
    parser.add_argument("--kit-steps", type=int, default=20)
    parser.add_argument("--kit-batch", type=int, default=10)
    parser.add_argument("--paper-steps", type=int, default=2)
    parser.add_argument("--paper-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per arm (the rules run 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak memory: RSS on cpu, allocated on cuda)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per arm; the fastest counts (noise only adds)")
    parser.add_argument("--window", type=float, default=0.7, help="the window arm's guided share of the steps")
    parser.add_argument("--no-record", action="store_true", help="print the table only")
    args = parser.parse_args()
    load0 = os.getloadavg()
    rows = []
    for setting in args.settings:
        steps, batch = (args.kit_steps, args.kit_batch) if setting == "kit" else (args.paper_steps, args.paper_batch)
        base = None
        for arm in ARMS:
            key = "cpu_s" if args.device == "cpu" else "s"  # CPU time: robust to a shared machine
            arm_args = (setting, arm, steps, batch, args.encoder, args.threads, args.device, args.window)
            r = min((run(*arm_args) for _ in range(args.repeat)), key=lambda x: x[key])
            cost = r[key]
            base = base or cost
            rows.append(
                f"| {setting} | {arm} | {batch} | {steps} | {r['s']:.1f} | {r['cpu_s']:.1f} | {cost / batch:.2f} | "
                f"{cost / steps:.2f} | {cost / base:.2f} | {r['peak_gb']:.2f} |"
            )
            print(rows[-1], flush=True)
    load1 = os.getloadavg()
    text = "\n".join(
        [
            HEADING,
            "",
            "Guided vs unguided sampling at equal steps and batch (`bench/braindive.py`): the guided arms add one UNet",
            "backward, the decoder and the encoder forward + backward per step; `two-pass` also runs the reference's",
            "separate gradient-free UNet forward; `x0` (approximate gradient, UNet Jacobian dropped) adds no UNet",
            f"backward; `window` guides the first {args.window:g} of the steps only. Target: guided / unguided ≤ 2.5",
            "with ε reuse.",
            "",
            f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; code: {code_version(TIMED)}",
            f"- machine: {machine(f'torch {torch.__version__}')}; {args.threads} thread(s) per arm; "
            f"device {args.device}",
            f"- load average (1, 5, 15 min) at start → end: {' '.join(f'{x:.2f}' for x in load0)} → "
            f"{' '.join(f'{x:.2f}' for x in load1)} (other work on the machine slows every arm)",
            f"- command: `python bench/braindive.py --settings {' '.join(args.settings)} "
            f"--kit-batch {args.kit_batch} --paper-steps {args.paper_steps} --paper-batch {args.paper_batch} "
            f"--threads {args.threads} --window {args.window:g} --repeat {args.repeat}`",
            "- kit: kit diffusion (64 px pixel space) + demo subj01 ridge_pooled encoder (kit CLIP live), DPM-Solver++;"
            " paper: random-weight SD-2.1-base UNet + VAE (512 px), ViT-B/16 + linear head, DPM-Solver++",
            f"- each arm run {args.repeat} times in fresh processes, the fastest kept (noise on a machine only adds)",
            "- s/image, s/step and × unguided: from the arm's CPU time on cpu (wall time on a shared machine counts",
            "  the others' work), wall time on cuda; peak GB: the arm process's maximum RSS (weights included)",
            "",
            "| setting | arm | batch | steps | wall s | CPU s | s/image | s/step | × unguided | peak GB |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "On a GPU (prepared, not yet run): `flock /tmp/brainatt-bench.lock python bench/braindive.py --device cuda "
            "--settings kit paper --paper-steps 50 --paper-batch 4` (peak memory is then the allocated GPU memory).",
            "",
        ]
    )
    report(args, HEADING, text)


if __name__ == "__main__":
    main()
