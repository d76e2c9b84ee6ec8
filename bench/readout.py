"""Per-voxel readouts, each formula against the one it replaced, side by side in one run.

- ``factorized, maps: voxel`` (a spatial map per voxel): ŷ_v = Σ_s m_v(s) w_v·x_s can be summed two ways.
  ``read first``: every voxel's feature weights read every token in one matrix product, then each voxel's map
  pools its column, a (B, S, V) intermediate. ``pool first``: every map pools the tokens, then each voxel reads
  its vector through `VoxelReadout`, a (B, V, C) intermediate. ``forward`` is `FactorizedEncoder`, which reads
  first when there are fewer tokens S than channels C. ``before`` is its previous formula: pool first, gather by
  voxel, elementwise product and sum.
- ``VoxelReadout, a query per voxel``: the dot product over D as an einsum on the query outputs (``einsum``, the
  gather skipped when voxel v reads query v) against ``before``: gather, elementwise product, sum.

Voxel v reads map or query v, the index `assign_queries` gives in ``voxel`` mode.

Each arm is a full training step (forward, MSE, backward, gradient clipping, AdamW) on random tokens, one thread,
interleaved over ``--repeats`` rounds; the table gives the median ms/step, the ratio to ``before`` and the
largest difference from the first arm's predictions (all compute the same sum). Sizes: the demo's subj01 (3,478
voxels, 8×8×128 kit tokens) and, with ``--nsd``, NSD subj01's nsdgeneral (15,724 voxels, DINOv2-base 31×31×768
tokens) at batch 8, which fits a 2-core machine's memory.

    python bench/readout.py --nsd      # writes the "## readout" section of RESULTS.md; --no-record prints only
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from collections.abc import Callable

import torch
from common import code_version, machine, report
from torch import nn

from brainatt.encoding.factorized import FactorizedEncoder
from brainatt.encoding.readout import VoxelReadout

HEADING = "## readout"
TIMED_CODE = ("brainatt/encoding/factorized.py", "brainatt/encoding/readout.py")


def before(model: FactorizedEncoder, tokens: torch.Tensor) -> torch.Tensor:
    """The factorized encoder's previous formula: pool per map, gather per voxel, elementwise product and sum."""
    pooled = torch.einsum("ms,bsc->bmc", torch.softmax(model.logits, 1), tokens.flatten(1, 2).float())
    return gather_mul_sum(model.readout, pooled)


def gather_mul_sum(readout: VoxelReadout, query_out: torch.Tensor) -> torch.Tensor:
    """`VoxelReadout`'s previous per-voxel formula."""
    z = query_out.index_select(1, readout.voxel_query)
    return (z * readout.weight).sum(-1) + readout.bias


def step_time(model: nn.Module, forward: Callable, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Mean ms per training step (forward, MSE, backward, clipping, AdamW) over ``steps`` steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = nn.functional.mse_loss(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
    return (time.perf_counter() - t0) / steps * 1000


def compare(name: str, size: str, arms: dict[str, Callable], make: Callable, args: argparse.Namespace) -> list[str]:
    """Table rows for one problem: ``arms`` maps a label to forward(model, x); the first arm is the new one."""
    torch.manual_seed(0)
    model, x, y = make()
    with torch.no_grad():
        outs = [forward(model, x) for forward in arms.values()]
    diff = max(float((o - outs[0]).abs().max()) for o in outs[1:])
    times: dict[str, list[float]] = {label: [] for label in arms}
    for _ in range(args.repeats):
        for label, forward in arms.items():
            torch.manual_seed(0)
            model, x, y = make()
            step_time(model, lambda x, f=forward, m=model: f(m, x), x, y, 1)  # warm-up
            times[label].append(step_time(model, lambda x, f=forward, m=model: f(m, x), x, y, args.steps))
    medians = {label: statistics.median(t) for label, t in times.items()}
    old = list(medians.values())[-1]
    return [f"| {name} | {size} | {label} | {ms:.1f} | {ms / old:.2f} | {diff:.1e} |" for label, ms in medians.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds per arm")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--nsd", action="store_true", help="also NSD subj01's size (15,724 voxels, 31×31×768, batch 8)")
    p.add_argument("--no-record", action="store_true", help="print the table only")
    args = p.parse_args()
    torch.set_num_threads(1)
    sizes = [("demo subj01", 32, 3478, (8, 8), 128)] + ([("NSD subj01", 8, 15724, (31, 31), 768)] if args.nsd else [])
    load = os.getloadavg()
    rows = []
    for label, batch, voxels, grid, width in sizes:

        def factorized(batch=batch, voxels=voxels, grid=grid, width=width):
            model = FactorizedEncoder(torch.arange(voxels).numpy(), voxels, grid, width)
            return model, torch.randn(batch, *grid, width).half(), torch.randn(batch, voxels)

        def readout(batch=batch, voxels=voxels, width=width):
            model = VoxelReadout(torch.arange(voxels).numpy(), width)
            return model, torch.randn(batch, voxels, width), torch.randn(batch, voxels)

        factorized_arms = {
            "forward": FactorizedEncoder.forward,
            "read first": FactorizedEncoder.read_first,
            "pool first": FactorizedEncoder.pool_first,
            "before: pool first, gather, mul, sum": before,
        }
        readout_arms = {"einsum": VoxelReadout.forward, "before: gather, mul, sum": gather_mul_sum}
        size = f"{label}: B {batch}, V {voxels:,}"
        rows += compare(
            "factorized, maps: voxel", f"{size}, {grid[0]}×{grid[1]}×{width}", factorized_arms, factorized, args
        )
        rows += compare("VoxelReadout, a query per voxel", f"{size}, D {width}", readout_arms, readout, args)
    text = "\n".join(
        [
            HEADING + ": per-voxel readouts, each formula against the gather-multiply-sum one",
            "",
            f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; code: {code_version(TIMED_CODE)}",
            f"- machine: {machine(f'torch {torch.__version__}')}; 1 thread",
            f"- load average before: {' '.join(f'{v:.2f}' for v in load)}; after: "
            + " ".join(f"{v:.2f}" for v in os.getloadavg()),
            f"- command: `python bench/readout.py{' --nsd' if args.nsd else ''}`; {args.repeats} interleaved rounds "
            f"of {args.steps} training steps per arm (forward, MSE, backward, clipping, AdamW), median",
            "",
            "| readout | size | arm | ms/step | × before | max abs Δ prediction |",
            "|---|---|---|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    report(args, HEADING, text)


if __name__ == "__main__":
    main()
