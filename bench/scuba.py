"""BrainSCUBA speed: captioning (batched with the KV cache vs one voxel at a time without it) and projection.

- captions: the kit captioner decodes random raw CLIP-scale embeddings with beam 5 (max 40 new tokens), batched
  (``--batch`` voxels per call, transformers ``generate`` with its KV cache) and one voxel per call with
  ``use_cache=False`` (the reference's loop); voxels captioned per second and the ratio (target ≥ 20×).
- projection: ``--voxels`` random weight rows onto ``--candidates`` random candidates of dimension ``--dim``
  (exact streaming softmax, β = 150), the candidates written to a candidate file (`brainatt.contracts.candidates`)
  and streamed from it as the stage does, in a child process for a clean peak RSS (target ≤ 4 GB) and its CPU
  time. Side by side on the first ``--slice-voxels`` voxels × ``--slice-candidates`` candidates: the streaming
  kernel, the previous kernel (allocating, float64 sums, NaN scrubbing per chunk) and the floor, the two GEMMs
  alone (logits, then the weighted sum of directions).

    flock /tmp/brainatt-bench.lock nice -n 10 python bench/scuba.py                  # both parts, 1,000,000
    python bench/scuba.py --part projection --voxels 2000 --candidates 100000 --no-record   # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import ROOT, code_version, machine, record

HEADING = "## scuba"
TIMED_CODE = ("brainatt/scuba/projection.py", "brainatt/contracts/candidates.py", "brainatt/models/captioner.py")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(f: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU (user + sys, all threads) seconds of ``f()``."""
    t, c = time.perf_counter(), _cpu()
    f()
    return time.perf_counter() - t, _cpu() - c


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


def write_candidates(path: Path, n: int, dim: int) -> None:
    """``n`` random raw embeddings (uniform directions, norms 8–12) written through the candidate contract."""
    from brainatt.contracts.candidates import candidates_writer

    rng = np.random.default_rng(0)
    with candidates_writer(path, {"bench": n}, dim, "bench", "random") as w:
        for i in range(0, n, 65536):
            m = min(65536, n - i)
            block = rng.standard_normal((m, dim), dtype=np.float32)
            block *= (rng.uniform(8, 12, m) / np.linalg.norm(block, axis=1))[:, None].astype(np.float32)
            w.add(block, [str(j) for j in range(i, i + m)])


@torch.no_grad()
def previous_kernel(w: torch.Tensor, dirs: torch.Tensor, nrm: torch.Tensor, beta: float, chunk: int) -> torch.Tensor:
    """The projection's streaming loop before it ran at GEMM speed (kept here as the side-by-side baseline)."""
    w = w / w.norm(dim=1, keepdim=True)
    m = torch.full((len(w),), -torch.inf, dtype=torch.float64)
    z = torch.zeros(len(w), dtype=torch.float64)
    d = torch.zeros(w.shape, dtype=torch.float64)
    r = torch.zeros(len(w), dtype=torch.float64)
    for c0 in range(0, len(dirs), chunk):
        e = dirs[c0 : c0 + chunk]
        logits = beta * (w @ e.T)
        m_new = torch.maximum(m, logits.max(1).values.double())
        scale = torch.exp(m - m_new).nan_to_num(0.0)
        p = torch.exp(logits - m_new[:, None].float()).nan_to_num(0.0)
        z = z * scale + p.sum(1, dtype=torch.float64)
        d = d * scale[:, None] + (p @ e).double()
        r = r * scale + (p @ nrm[c0 : c0 + chunk]).double()
        m = m_new
    return (r / z)[:, None] * d / d.norm(dim=1, keepdim=True)


def child_projection(path: Path, voxels: int, dim: int, chunk: int, slice_v: int, slice_c: int) -> None:
    from brainatt.contracts.candidates import Candidates
    from brainatt.scuba.projection import TILE, project, project_stream, unit_candidates

    cands = Candidates(path)
    w = np.random.default_rng(1).standard_normal((voxels, dim), dtype=np.float32)

    def chunks():
        for _, raw in cands.chunks(chunk):
            dirs, norms = unit_candidates(raw)
            yield dirs, norms, np.zeros(len(dirs), np.int64)

    out: dict = {"threads": torch.get_num_threads()}
    # side by side on a slice held in memory
    dirs, norms = unit_candidates(next(cands.chunks(slice_c))[1])
    ws, dt, nt = torch.from_numpy(w[:slice_v]), torch.from_numpy(dirs), torch.from_numpy(norms)
    gemms = lambda: [ws @ dt[c : c + TILE].T @ dt[c : c + TILE] for c in range(0, len(dt), TILE)]  # noqa: E731
    out["slice"] = {
        "streaming": _timed(lambda: project(w[:slice_v], dirs, norms)),
        "previous": _timed(lambda: previous_kernel(ws, dt, nt, 150.0, 8192)),
        "gemm_floor": _timed(gemms),
    }
    diff = np.abs(project(w[:slice_v], dirs, norms) - previous_kernel(ws, dt, nt, 150.0, 8192).numpy()).max()
    out["slice"]["max_abs_diff"] = float(diff)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["seconds"], out["cpu_seconds"] = _timed(lambda: project_stream(w, chunks))
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["slice_rss"] = base_rss
    print(json.dumps(out))


def projection_text(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "candidates.h5"
        t = time.perf_counter()
        write_candidates(path, args.candidates, args.dim)
        write_s = time.perf_counter() - t
        cmd = [sys.executable, __file__, "--child", str(path), "--voxels", str(args.voxels), "--dim", str(args.dim),
               "--chunk", str(args.chunk), "--slice-voxels", str(args.slice_voxels),
               "--slice-candidates", str(args.slice_candidates)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            sys.exit(proc.stderr)
        p = json.loads(proc.stdout.strip().splitlines()[-1])
    s = p["slice"]
    pairs = args.voxels * args.candidates
    floor_cpu = s["gemm_floor"][1] * pairs / (args.slice_voxels * args.slice_candidates)
    rss_ok = "met" if p["peak_rss"] <= 4e9 else "missed"
    gb = args.candidates * args.dim * 4 / 1e9
    kernels = [("streaming", "streaming (in place, float32 blocks)"), ("previous", "previous kernel"),
               ("gemm_floor", "two GEMMs alone (floor)")]  # fmt: skip
    return (
        f"### projection\n\n"
        f"- command: `{' '.join(['python', 'bench/scuba.py', *sys.argv[1:]])}`; torch threads {p['threads']}\n\n"
        "| measure | wall s | CPU s (user+sys) | target |\n|---|---:|---:|---|\n"
        f"| write {args.candidates:,} × {args.dim} candidates (candidate file, {gb:.1f} GB) | {write_s:.0f} | | |\n"
        f"| projection {args.voxels:,} voxels × {args.candidates:,} candidates, streamed from the file | "
        f"{p['seconds']:.0f} | {p['cpu_seconds']:.0f} | |\n"
        f"| the two GEMMs alone at that size (CPU s, scaled from the slice) | | {floor_cpu:.0f} | |\n"
        f"| peak RSS of the projection process, GB | {p['peak_rss'] / 1e9:.2f} | | ≤ 4 {rss_ok} |\n\n"
        f"Side by side on {args.slice_voxels:,} voxels × {args.slice_candidates:,} candidates in memory "
        f"(max |difference| {s['max_abs_diff']:.1e}):\n\n"
        "| kernel | wall s | CPU s |\n|---|---:|---:|\n"
        + "".join(f"| {name} | {s[key][0]:.1f} | {s[key][1]:.1f} |\n" for key, name in kernels)
    )


def captions_text(args: argparse.Namespace) -> str:
    caps = bench_captions(args.caption_voxels, args.single_voxels, args.batch)
    ratio_ok = "met" if caps["ratio"] >= 20 else "missed"
    return (
        f"### captions\n\n- command: `{' '.join(['python', 'bench/scuba.py', *sys.argv[1:]])}`\n\n"
        "| measure | value | target |\n|---|---:|---|\n"
        f"| captions, batched ({args.batch}/call, KV cache), voxels/s | {caps['batched_vps']:.1f} | |\n"
        f"| captions, one voxel/call, no KV cache, voxels/s | {caps['single_vps']:.2f} | |\n"
        f"| ratio | {caps['ratio']:.0f}× | ≥ 20× {ratio_ok} |\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["all", "captions", "projection"], default="all")
    p.add_argument("--voxels", type=int, default=15724)
    p.add_argument("--candidates", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk", type=int, default=65536, help="candidates read from the file at a time")
    p.add_argument("--slice-voxels", type=int, default=2048)
    p.add_argument("--slice-candidates", type=int, default=32768)
    p.add_argument("--caption-voxels", type=int, default=512)
    p.add_argument("--single-voxels", type=int, default=16)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--tmp", help="folder for the candidate file (default: the system's temporary folder)")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    if args.child:
        child_projection(args.child, args.voxels, args.dim, args.chunk, args.slice_voxels, args.slice_candidates)
        return
    start = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = (
        f"- date: {start}\n- machine: {machine(f'torch {torch.__version__}')}\n"
        f"- package code: {code_version(TIMED_CODE)}\n"
    )
    parts = ["captions", "projection"] if args.part == "all" else [args.part]
    for part in parts:
        text = (captions_text if part == "captions" else projection_text)(args)
        text = text.replace("\n\n", f"\n\n{head}", 1)
        print(text)
        if not args.no_record:
            record(HEADING, text, subsection=part)


if __name__ == "__main__":
    main()
