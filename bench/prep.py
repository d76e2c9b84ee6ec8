"""Preprocessing throughput on one NSD-sized session against a raw h5py read of the same file.

Writes one synthetic session like NSD's ``betas_sessionNN.hdf5`` (dataset ``betas``, (trials,Z,Y,X) =
(750,83,104,81) int16, uncompressed), then times, each run in a fresh subprocess so that peak RSS is per method:

- ``raw``: ``h5py.File(path)["betas"][:]``, the whole array;
- ``ours``: the package's `brainatt.nsd.layout.read_session` + `brainatt.prep.responses.zscore_session`,
  exactly the per-session read and z-score that `preprocess_subject` runs (its dead-voxel check, float16 trial
  write and per-image sums come after and are not timed).

Two masks: a brain-shaped ellipsoid (full brain) and a 15,724-voxel nsdgeneral-like posterior cortical shell.
Cold-cache runs drop the page cache before each run (needs root and a writable /proc/sys/vm/drop_caches);
warm-cache runs read the file once first. Throughput is the session's betas bytes over the median seconds; the
target is judged on medians, and the ratio of the fastest runs is shown beside it (less sensitive to other load).
The markdown table is printed and replaces its layout's subsection of RESULTS.md.

    python bench/prep.py                                 # contiguous layout, cold and warm, 5 repeats (~1.5 min)
    python bench/prep.py --layout chunked --repeats 3    # one chunk per voxel time series (~5 min)
    python bench/prep.py --workdir /tmp/prep-bench ...   # keep the session files for the next run

Wrap it in ``flock /tmp/brainatt-bench.lock`` on a shared machine so that benchmarks never overlap.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from common import RESULTS, code_version, machine, report

SHAPE = (750, 83, 104, 81)  # (trials, Z, Y, X) as h5py reads NSD's files
NSDGENERAL_VOXELS = 15_724  # nsdgeneral size of subj01 at 1.8 mm
HEADING = "## prep"
TARGET_RATIO, TARGET_RSS = 0.7, 3e9
TIMED_CODE = ("brainatt/nsd", "brainatt/prep")  # the package code `ours` runs
METHODS = ("raw", "ours")
LAYOUTS = {
    "contiguous": None,  # not chunked, no filter
    "chunked": (SHAPE[0], 1, 1, 1),  # one chunk per voxel time series (MATLAB ChunkSize [1 1 1 750])
}


def brain_masks() -> dict[str, np.ndarray]:
    """(X,Y,Z) bool masks: a brain-sized ellipsoid, and a posterior shell of it the size of nsdgeneral."""
    nx, ny, nz = SHAPE[:0:-1]
    x, y, z = np.ogrid[:nx, :ny, :nz]
    r = ((x - 40) / 34) ** 2 + ((y - 52) / 44) ** 2 + ((z - 41) / 36) ** 2
    brain = r <= 1
    shell = np.flatnonzero(brain & (r >= 0.6))
    posterior = shell[np.argsort(np.broadcast_to(y, brain.shape).ravel()[shell], kind="stable")]
    nsdgeneral = np.zeros(brain.size, bool)
    nsdgeneral[posterior[:NSDGENERAL_VOXELS]] = True
    return {"full": brain, "nsdgeneral": nsdgeneral.reshape(brain.shape)}


def write_session(path: Path, layout: str, brain: np.ndarray) -> None:
    """rint(N(0,1)·300) int16 inside ``brain``, 0 outside; z-slab by z-slab, so each chunk is written once."""
    tmp = path.with_suffix(".tmp")
    rng = np.random.default_rng(0)
    brain_zyx = brain.transpose(2, 1, 0)
    with h5py.File(tmp, "w") as f:
        ds = f.create_dataset("betas", SHAPE, np.int16, chunks=LAYOUTS[layout])
        for z0 in range(0, SHAPE[1], 4):
            z1 = min(z0 + 4, SHAPE[1])
            block = rng.standard_normal((SHAPE[0], z1 - z0, *SHAPE[2:]), dtype=np.float32) * 300
            ds[:, z0:z1] = np.rint(block).astype(np.int16) * brain_zyx[z0:z1]
    tmp.rename(path)


def session_file(workdir: Path, layout: str, brain: np.ndarray) -> Path:
    """The session file of ``layout`` in ``workdir``, written unless a complete one is there already."""
    path = workdir / f"betas_session01_{layout}.hdf5"
    if path.exists():
        with h5py.File(path, "r") as f:
            if f["betas"].shape == SHAPE and f["betas"].chunks == LAYOUTS[layout]:
                return path
    t0 = time.perf_counter()
    write_session(path, layout, brain)
    os.sync()
    print(f"wrote {path} ({layout}) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


def child(method: str, path: Path, mask_path: Path | None) -> None:
    """Run one method once and print its seconds and this process's peak RSS as JSON."""
    if method == "raw":
        t0 = time.perf_counter()
        with h5py.File(path, "r") as f:
            f["betas"][:]
    else:
        from brainatt.nsd.layout import read_session
        from brainatt.prep.responses import zscore_session

        assert mask_path is not None
        mask = np.load(mask_path)
        t0 = time.perf_counter()
        zscore_session(read_session(path, mask))
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def warm_page_cache(path: Path) -> None:
    with path.open("rb") as f:
        while f.read(64 << 20):
            pass


@dataclass
class Row:
    method: str
    mask: str
    voxels: int | None
    cache: str
    seconds: list[float]
    peak_rss: list[int]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def measure(
    path: Path, masks: dict[str, tuple[Path, int]], methods: list[str], caches: list[str], repeats: int
) -> list[Row]:
    """Every (method, mask, cache) ``repeats`` times, repeats outermost so that drift hits all methods alike."""
    configs = [(m, None) for m in methods if m == "raw"] + [(m, k) for m in methods if m != "raw" for k in masks]
    rows = {(m, k, c): Row(m, k or "—", masks[k][1] if k else None, c, [], []) for c in caches for m, k in configs}
    for rep in range(repeats):
        for cache in caches:
            if cache == "warm":
                warm_page_cache(path)
            for method, mask in configs:
                if cache == "cold":
                    drop_page_cache()
                cmd = [sys.executable, __file__, "--child", method, "--file", str(path)]
                cmd += ["--mask-file", str(masks[mask][0])] if mask else []
                res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                row = rows[method, mask, cache]
                row.seconds.append(res["seconds"])
                row.peak_rss.append(res["peak_rss"])
                print(f"[{rep + 1}/{repeats}] {cache} {method} {mask or ''}: {res['seconds']:.2f} s", file=sys.stderr)
    return list(rows.values())


def table(rows: list[Row], nbytes: int) -> str:
    raw = {r.cache: r for r in rows if r.method == "raw"}
    lines = [
        "| method | mask (voxels) | cache | median s | best s | runs s | MB/s | × raw | × raw (best) | peak RSS GB "
        "| target |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = raw[r.cache].median / r.median
        best = min(raw[r.cache].seconds) / min(r.seconds)
        rss = max(r.peak_rss)
        ok = ratio >= TARGET_RATIO and rss <= TARGET_RSS
        mask = f"{r.mask} ({r.voxels:,})" if r.voxels else r.mask
        runs = ", ".join(f"{s:.2f}" for s in r.seconds)
        lines.append(
            f"| {r.method} | {mask} | {r.cache} | {r.median:.2f} | {min(r.seconds):.2f} | {runs} "
            f"| {nbytes / r.median / 1e6:,.0f} | {ratio:.2f} | {best:.2f} | {rss / 1e9:.2f} "
            f"| {'' if r.method == 'raw' else 'met' if ok else 'missed'} |"
        )
    return "\n".join(lines)


def section(layout: str, body: str, notes: list[str]) -> str:
    cmd = shlex.join(["python", "bench/prep.py", *sys.argv[1:]])
    return "\n".join(
        [
            f"### {layout} layout",
            "",
            f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
            f"- machine: {machine(versions())}",
            f"- command: `{cmd}`",
            *(f"- {n}" for n in notes),
            "",
            body,
            "",
        ]
    )


def versions() -> str:
    return f"numpy {np.__version__}, h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", choices=LAYOUTS, default="contiguous", help="HDF5 storage layout of the session")
    p.add_argument("--cache", choices=("cold", "warm", "both"), default="both", help="page-cache state per run")
    p.add_argument("--repeats", type=int, default=5, help="runs per measurement; the median is reported")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="what to time")
    p.add_argument("--workdir", type=Path, help="keep (and reuse) the session file here instead of a temp dir")
    p.add_argument("--no-record", action="store_true", help=f"print the table only; leave {RESULTS.name} alone")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--mask-file", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.file, args.mask_file)
        return
    if "raw" not in args.methods:
        p.error("--methods must include raw: the ratios are against it")

    caches = ["cold", "warm"] if args.cache == "both" else [args.cache]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    notes = []
    if "cold" in caches and not drop_page_cache():
        caches = ["warm"]
        notes.append("cold cache unavailable (cannot write /proc/sys/vm/drop_caches): warm-cache numbers only")
        print(notes[-1], file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        masks = {}
        volumes = brain_masks()
        for name, mask in volumes.items():
            np.save(workdir / f"mask_{name}.npy", mask)
            masks[name] = (workdir / f"mask_{name}.npy", int(mask.sum()))
        path = session_file(workdir, args.layout, volumes["full"])
        rows = measure(path, masks, args.methods, caches, args.repeats)
    nbytes = int(np.prod(SHAPE)) * 2
    load += " → " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    notes.insert(0, f"package code: {code_version(TIMED_CODE)}; load average (1, 5, 15 min) at start → end: {load}")
    notes.append(
        f"session: {' × '.join(map(str, SHAPE))} int16 = {nbytes / 1e9:.3f} GB of betas; MB/s = these bytes / "
        "median s; × raw = raw median s / this median s (same cache state), × raw (best) the same with the fastest "
        "runs; peak RSS = max over runs of the "
        f"child's ru_maxrss; target: ≥ {TARGET_RATIO}× raw and ≤ {TARGET_RSS / 1e9:.0f} GB"
    )
    text = section(args.layout, table(rows, nbytes), notes)
    report(args, HEADING, text, f"{args.layout} layout")


if __name__ == "__main__":
    main()
