"""BrainSCUBA speed: captioning (batched with the KV cache vs one voxel at a time without it) and projection.

- captions: the kit captioner decodes random raw CLIP-scale embeddings with beam 5 (max 40 new tokens), batched
  (``--batch`` voxels per call, transformers ``generate`` with its KV cache) and one voxel per call with
  ``use_cache=False`` (the reference's loop); voxels captioned per second and the ratio (target ≥ 20×).
- projection: ``--voxels`` random unit weight rows onto ``--candidates`` random unit candidates of dimension
  ``--dim`` (exact streaming softmax, β = 150), in a child process for a clean peak RSS (target ≤ 4 GB).

    flock /tmp/brainatt-bench.lock python bench/scuba.py                          # 15,724 × 1,000,000
    python bench/scuba.py --voxels 2000 --candidates 100000 --no-record           # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime

import numpy as np
import torch
from common import ROOT, code_version, machine, record

HEADING = "## scuba"
TIMED_CODE = ("brainatt/scuba/projection.py", "brainatt/models/captioner.py")


def bench_captions(n_batched: int, n_single: int, batch: int) -> dict:
    from brainatt.models.loading import load_captioner
    from brainatt.models.spec import ModelSpec

    cap = load_captioner(ModelSpec(role="captioner", name="kit:captioner", source="captioner"))
    emb = torch.randn(max(n_batched, n_single), cap.clip_dim, generator=torch.Generator().manual_seed(0)) * 4
    t = time.perf_counter()
    for i in range(0, n_batched, batch):
        cap.generate(emb[i : min(i + batch, n_batched)], num_beams=5, max_new_tokens=40)
    batched = n_batched / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(n_single):
        cap.generate(emb[i : i + 1], num_beams=5, max_new_tokens=40, use_cache=False)
    single = n_single / (time.perf_counter() - t)
    return {"batched_vps": batched, "single_vps": single, "ratio": batched / single}


def child_projection(voxels: int, candidates: int, dim: int, chunk: int) -> None:
    from brainatt.scuba.projection import project

    rng = np.random.default_rng(0)
    dirs = np.empty((candidates, dim), np.float32)
    for i in range(0, candidates, 100_000):
        block = rng.standard_normal((min(100_000, candidates - i), dim), dtype=np.float32)
        dirs[i : i + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    norms = rng.uniform(8, 12, candidates).astype(np.float32)
    w = rng.standard_normal((voxels, dim), dtype=np.float32)
    t = time.perf_counter()
    project(w, dirs, norms, chunk=chunk)
    seconds = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_rss": rss, "inputs_bytes": dirs.nbytes + w.nbytes}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voxels", type=int, default=15724)
    p.add_argument("--candidates", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk", type=int, default=8192)
    p.add_argument("--caption-voxels", type=int, default=512)
    p.add_argument("--single-voxels", type=int, default=16)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    if args.child:
        child_projection(args.voxels, args.candidates, args.dim, args.chunk)
        return
    start = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    caps = bench_captions(args.caption_voxels, args.single_voxels, args.batch)
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--voxels", str(args.voxels), "--candidates", str(args.candidates),
         "--dim", str(args.dim), "--chunk", str(args.chunk)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    proj = json.loads(out.stdout.strip().splitlines()[-1])
    rss_ok = "met" if proj["peak_rss"] <= 4e9 else "missed"
    ratio_ok = "met" if caps["ratio"] >= 20 else "missed"
    text = (
        f"{HEADING}\n\nBrainSCUBA captioning and projection speed: `bench/scuba.py`.\n\n"
        f"- date: {start}\n- machine: {machine(f'torch {torch.__version__}')}\n"
        f"- command: `python bench/scuba.py {' '.join(sys.argv[1:])}`\n- package code: {code_version(TIMED_CODE)}\n\n"
        "| measure | value | target |\n|---|---:|---|\n"
        f"| captions, batched ({args.batch}/call, KV cache), voxels/s | {caps['batched_vps']:.1f} | |\n"
        f"| captions, one voxel/call, no KV cache, voxels/s | {caps['single_vps']:.2f} | |\n"
        f"| ratio | {caps['ratio']:.0f}× | ≥ 20× {ratio_ok} |\n"
        f"| projection {args.voxels:,} voxels × {args.candidates:,} candidates (d={args.dim}), s | "
        f"{proj['seconds']:.1f} | |\n"
        f"| projection peak RSS, GB (inputs {proj['inputs_bytes'] / 1e9:.2f} GB) | {proj['peak_rss'] / 1e9:.2f} | "
        f"≤ 4 {rss_ok} |\n"
    )
    print(text)
    if not args.no_record:
        record(HEADING, text)


if __name__ == "__main__":
    main()
