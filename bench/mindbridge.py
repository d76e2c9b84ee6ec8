"""MindBridge: training throughput on the CPU, and the size of the paper-size model with dense and low-rank heads.

Parameter counts are exact and come from the model built on PyTorch's ``meta`` device (shapes only, no memory),
so the 694 M-parameter dense model is counted without allocating it. Training memory is estimated as 16 bytes
per trained parameter (fp32 weights, gradients and AdamW's two moments), activations excluded; the GPU command
(``--gpu``) measures the real peak and step time at batch 50 per subject.

    python bench/mindbridge.py [--steps 30] [--gpu] [--no-record]
"""

from __future__ import annotations

import argparse
import random
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
        voxels, shapes = {"subj01": 3478, "subj02": 2290, "subj03": 3168}, ((1, 512), (1, 512))
        model = MindBridge(voxels, *shapes, MindBridgeConfig()).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = {s: torch.randn(50, v, device=device) for s, v in voxels.items()}
    n = 50 * len(voxels)
    image, text = torch.randn(n, *shapes[0], device=device), torch.randn(n, *shapes[1], device=device)
    rng = random.Random(0)
    cuda = device.startswith("cuda")
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = model.losses(batch, image, text, rng)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    sec = sorted(times)[len(times) // 2]
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return n / sec, sec, peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--gpu", action="store_true", help="paper-size step time and peak memory on cuda")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    lines = [
        "## mindbridge",
        "",
        "Training throughput and model size: `bench/mindbridge.py` (counts from the model built on the meta device;",
        "memory = 16 B per trained parameter, activations excluded).",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine(f'torch {torch.__version__}')}",
        f"- command: `python bench/mindbridge.py --steps {args.steps}`",
        f"- package code: {code_version(('brainatt/mindbridge/model.py',))}",
        "",
        "Paper-size model (P 8192, h 2048, 4 blocks, 257×768 image and 77×768 text tokens, 4 subjects):",
        "",
        "| heads | parameters (M) | heads (M) | per subject E+B (M) | AdamW training GiB | reset-tuning GiB |",
        "|---|---:|---:|---:|---:|---:|",
        *sizes(),
        "",
    ]
    sps, sec, _ = step_time("cpu", args.steps, paper=False)
    lines += [
        "Demo-size bridge training on the CPU (1 thread; 3 subjects × 50 trials per step, P 1024, h 256, pooled",
        "512-d targets):",
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
