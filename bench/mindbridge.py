"""MindBridge: training throughput on the CPU, and the size of the paper-size model with dense and low-rank heads.

Parameter counts are exact and come from the model built on PyTorch's ``meta`` device (shapes only, no memory),
so the 694 M-parameter dense model is counted without allocating it. Training memory is estimated as 16 bytes
per trained parameter (fp32 weights, gradients and AdamW's two moments), activations excluded. ``--memory`` also
measures the peak resident memory of one real training step on the CPU (batch 50 per subject, fp32, each case in a
fresh process): full training with low-rank heads, and reset-tuning of the dense model (the dense model's full
training, ≈ 11 GiB, is left to the GPU command). The GPU command (``--gpu``) measures the peak and step time at
batch 50 per subject.

    python bench/mindbridge.py [--steps 30] [--memory] [--gpu] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import code_version, machine, report

from brainatt.mindbridge.model import MindBridge, MindBridgeConfig, count_parameters

PAPER = dict(pool=8192, hidden=2048, blocks=4, adapter=128)
SUBJECTS = {"subj01": 15724, "subj02": 14278, "subj05": 13039, "subj07": 12682}
GPU_COMMAND = "python bench/mindbridge.py --gpu --steps 20"


def paper_model(rank: int, device: str = "meta") -> MindBridge:
    with torch.device(device):
        return MindBridge(SUBJECTS, (257, 768), (77, 768), MindBridgeConfig(**PAPER, rank=rank))


def sizes() -> list[str]:
    rows = []
    for rank in (0, 1024, 256):
        m = paper_model(rank)
        total = count_parameters(m)
        heads = count_parameters(m.image_head) + count_parameters(m.text_head)
        per_subject = sum(p.numel() for p in m.subject_parameters("subj01"))
        rows.append(
            f"| {'dense' if not rank else f'low-rank {rank}'} | {total / 1e6:.1f} | {heads / 1e6:.1f} | "
            f"{per_subject / 1e6:.2f} | {16 * total / 2**30:.1f} | {16 * per_subject / 2**30:.2f} |"
        )
    return rows


def step_time(device: str, steps: int, paper: bool) -> tuple[float, float, float]:
    """(samples/s, s/step, peak GiB on a GPU) of bridge training steps, batch 50 per subject."""
    torch.manual_seed(0)
    if paper:
        model, voxels, shapes = paper_model(0, device), SUBJECTS, ((257, 768), (77, 768))
    else:
        voxels, shapes = {"subj01": 3478, "subj02": 2290, "subj03": 3168}, ((1, 128), (1, 128))
        model = MindBridge(voxels, *shapes, MindBridgeConfig()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = {s: torch.randn(50, v, device=device) for s, v in voxels.items()}
    n = 50 * len(voxels)
    image, text = torch.randn(n, *shapes[0], device=device), torch.randn(n, *shapes[1], device=device)
    rng = random.Random(0)
    cuda = device.startswith("cuda")
    clock = time.perf_counter if cuda else time.process_time  # CPU time on the CPU: what a shared machine can't inflate
    times = []
    for i in range(steps + 3):
        t0 = clock()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = model.losses(batch, image, text, rng)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= 3:
            times.append(clock() - t0)
    sec = sorted(times)[len(times) // 2]
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return n / sec, sec, peak


def one_step(rank: int, regime: str) -> dict[str, float]:
    """Peak RSS (GiB) and time of one fp32 training step of the paper-size model on the CPU, batch 50 per subject:
    ``train`` (every parameter, the 4 subjects) or ``reset`` (a new subject's embedder and builder, with one source)."""
    torch.manual_seed(0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    model = paper_model(rank, "cpu")
    if regime == "reset":
        model.add_subject("new", 9000)
        voxels = {"new": 9000, "subj01": SUBJECTS["subj01"]}
        model.requires_grad_(False)
        trainable = model.subject_parameters("new")
        for p in trainable:
            p.requires_grad_(True)
    else:
        voxels, trainable = SUBJECTS, list(model.parameters())
    opt = torch.optim.AdamW(trainable, lr=1e-4, fused=True)
    batch = {s: torch.randn(50, v) for s, v in voxels.items()}
    n = 50 * len(voxels)
    image, text = torch.randn(n, 257, 768), torch.randn(n, 77, 768)
    t0 = time.process_time()
    loss = model.losses(batch, image, text, random.Random(0))["total"]
    loss.backward()
    opt.step()
    sec = time.process_time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"peak_gib": peak, "base_gib": base, "seconds": sec, "trained": sum(p.numel() for p in trainable)}


def memory_rows() -> list[str]:
    rows = []
    for rank, regime in ((256, "train"), (0, "reset")):
        cmd = [sys.executable, __file__, "--one-step", str(rank), regime]
        out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        heads = "dense" if not rank else f"low-rank {rank}"
        rows.append(
            f"| {heads} | {regime} | {out['trained'] / 1e6:.1f} | {16 * out['trained'] / 2**30:.1f} | "
            f"{out['peak_gib']:.1f} | {out['seconds']:.0f} |"
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--gpu", action="store_true", help="paper-size step time and peak memory on cuda")
    p.add_argument("--memory", action="store_true", help="measured CPU peak memory of one paper-size step")
    p.add_argument("--one-step", nargs=2, metavar=("RANK", "REGIME"), help=argparse.SUPPRESS)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.one_step:
        print(json.dumps(one_step(int(args.one_step[0]), args.one_step[1])))
        return
    lines = [
        "## mindbridge",
        "",
        "Training throughput and model size: `bench/mindbridge.py` (counts from the model built on the meta device;",
        "memory = 16 B per trained parameter, activations excluded).",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine(f'torch {torch.__version__}')}",
        f"- command: `python bench/mindbridge.py --steps {args.steps}{' --memory' if args.memory else ''}`",
        f"- package code: {code_version(('brainatt/mindbridge/model.py',))}",
        "",
        "Paper-size model (P 8192, h 2048, 4 blocks, 257×768 image and 77×768 text tokens, 4 subjects):",
        "",
        "| heads | parameters (M) | heads (M) | per subject E+B (M) | AdamW training GiB | reset-tuning GiB |",
        "|---|---:|---:|---:|---:|---:|",
        *sizes(),
        "",
    ]
    if args.memory:
        lines += [
            "Measured on the CPU: peak resident memory of the whole process (weights included) over one fp32",
            "training step of the paper-size model at batch 50 per subject (reset-tuning: the new subject and one",
            "source), against the 16 B per trained parameter estimate:",
            "",
            "| heads | regime | trained (M) | estimate GiB | peak RSS GiB | CPU-s/step (1 thread) |",
            "|---|---|---:|---:|---:|---:|",
            *memory_rows(),
            "",
        ]
    sps, sec, _ = step_time("cpu", args.steps, paper=False)
    lines += [
        "Demo-size bridge training on the CPU (1 thread, CPU time per step, median; 3 subjects × 50 trials per step,",
        "P 1024, h 256, pooled 128-d targets, as the kit's):",
        "",
        "| device | samples/s | s/step |",
        "|---|---:|---:|",
        f"| cpu | {sps:.0f} | {sec:.3f} |",
    ]
    if args.gpu:
        sps, sec, peak = step_time("cuda", args.steps, paper=True)
        lines.append(f"| cuda, paper size, bf16 | {sps:.0f} | {sec:.3f} (peak {peak:.1f} GiB) |")
    else:
        lines += ["", f"Paper-size step time and peak memory at batch 50 per subject on a GPU: `{GPU_COMMAND}`."]
    report(args, "## mindbridge", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
