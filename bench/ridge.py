"""Ridge with per-voxel α by 5-fold CV: brainatt's RidgeCV against himalaya's and scikit-learn's, in one run.

Problem (defaults: subj01 nsdgeneral size): n = 8000 images, p = 768 features with a decaying (power-law)
spectrum, t = 15,724 voxels whose signal-to-noise ratios spread from none to strong, so the selected α spread over
the grid; float32; 13 α = logspace(-1, 5, 13) (in units of the mean eigenvalue of XᵀX / n, so the grid brackets
the choices). Methods, each run in a fresh child process (clean peak RSS, ru_maxrss of the child):

- ``ours``: `brainatt.encoding.ridge.RidgeCV` (5-fold KFold, fit_intercept=True, defaults otherwise);
- ``himalaya``: ``himalaya.ridge.RidgeCV`` (numpy backend, fit_intercept=True, the same KFold splitter and α grid,
  default solver "svd" and solver_params; its criterion, the fold-mean negative MSE, is the one ours uses);
- ``sklearn``: ``sklearn.linear_model.RidgeCV(alpha_per_target=True)`` on the same grid. scikit-learn allows a
  per-target α only with its efficient leave-one-out (GCV) criterion, so its α differ by design: a different
  criterion, shown for speed. ``--sklearn-targets`` runs it on the first m voxels and scales the time by t/m;
- ``ours64`` and ``himalaya64``: the same two solvers in float64, the criterion computed without float32 rounding.
  Near ties between two α (relative score gaps ~1e-6) are settled by rounding in float32, differently by each
  solver, so α agreement is judged against himalaya's exact (float64) answer; agreement with its float32 answer
  is shown beside it, with himalaya float32's own agreement with himalaya float64 as the floor any float32 solver
  can reach.

The table (median seconds, ratio ours/himalaya, peak RSS, α agreement with himalaya in float32 and float64, max
|coef − himalaya coef|) is printed and replaces the "## ridge" section of bench/RESULTS.md. Targets: ratio to
himalaya (float32) ≤ 0.25, same α as himalaya (float64) on ≥ 99.9% of voxels, peak RSS ≤ 8 GB. Wrap runs in
``flock /tmp/brainatt-bench.lock`` so benchmarks never overlap.

    flock /tmp/brainatt-bench.lock python bench/ridge.py                    # full size (~15 min on 2 quiet cores)
    python bench/ridge.py --n 2000 --p 256 --t 2000 --no-record             # a quick smoke run
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from common import RESULTS, code_version, machine, report

HEADING = "## ridge"
METHODS = ("ours", "himalaya", "sklearn", "ours64", "himalaya64")
TARGET_RATIO, TARGET_AGREE, TARGET_RSS = 0.25, 0.999, 8e9
TIMED_CODE = ("brainatt/encoding/ridge.py",)


def make_problem(n: int, p: int, t: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X (n, p) float32 with eigenvalues ∝ k^-1 in a random basis, Y (n, t) float32 and the α grid.

    Each voxel is ``X w_j · g_j + noise`` with w_j a random direction weighted towards the leading features and a
    gain g_j log-uniform over four decades (10% of voxels are pure noise), so the best α spreads over the grid.
    """
    rng = np.random.default_rng(seed)
    spectrum = np.arange(1, p + 1) ** -0.5  # singular values; eigenvalues ∝ 1/k
    basis = np.linalg.qr(rng.standard_normal((p, p)))[0]
    X = ((rng.standard_normal((n, p)) * spectrum) @ basis.T).astype(np.float32)
    X /= X.std(0)
    gains = 10 ** rng.uniform(-2.5, 1.5, t)
    gains[rng.random(t) < 0.1] = 0.0
    Y = np.empty((n, t), np.float32)
    for start in range(0, t, 2048):
        cols = slice(start, min(start + 2048, t))
        w = basis @ (rng.standard_normal((p, cols.stop - start)) * spectrum[:, None])
        signal = X @ w.astype(np.float32)
        signal /= signal.std(0) + 1e-12
        Y[:, cols] = signal * gains[cols] / np.sqrt(n / 50) + rng.standard_normal((n, cols.stop - start))
    scale = float(np.mean(np.linalg.eigvalsh(X.T.astype(np.float64) @ X)))  # mean eigenvalue of XᵀX
    return X, Y, np.logspace(-1, 5, 13) * scale / 100


def child(method: str, workdir: Path, n_targets: int | None) -> None:
    """Fit one method once on the problem saved in ``workdir``; save its α and coefficients; print seconds + RSS."""
    X, Y, alphas = (np.load(workdir / f"{name}.npy") for name in ("X", "Y", "alphas"))
    if n_targets is not None:
        Y = np.ascontiguousarray(Y[:, :n_targets])
    if method == "himalaya64":  # himalaya computes in its inputs' dtype
        X, Y = X.astype(np.float64), Y.astype(np.float64)
    from sklearn.model_selection import KFold

    t0 = time.perf_counter()
    if method in ("ours", "ours64"):
        from brainatt.encoding.ridge import RidgeCV

        model = RidgeCV(alphas, cv=5, dtype="float64" if method == "ours64" else "float32").fit(X, Y)
        best, coef = model.alphas_, model.coef_
    elif method in ("himalaya", "himalaya64"):
        from himalaya.backend import set_backend
        from himalaya.ridge import RidgeCV

        set_backend("numpy")
        model = RidgeCV(alphas=alphas, fit_intercept=True, cv=KFold(5)).fit(X, Y)
        best, coef = model.best_alphas_, model.coef_
    else:
        from sklearn.linear_model import RidgeCV

        model = RidgeCV(alphas=alphas, alpha_per_target=True).fit(X, Y)
        best, coef = model.alpha_, model.coef_.T
    seconds = time.perf_counter() - t0
    np.save(workdir / f"alphas_{method}.npy", np.asarray(best, np.float64))
    np.save(workdir / f"coef_{method}.npy", np.asarray(coef, np.float32))
    print(json.dumps({"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


@dataclass
class Row:
    method: str
    runs: list[float] = field(default_factory=list)
    peak_rss: int = 0
    n_targets: int = 0
    scale: float = 1.0  # t / targets run (sklearn on a subset)

    @property
    def median(self) -> float:
        return statistics.median(self.runs) * self.scale


def measure(method: str, workdir: Path, repeats: int, n_targets: int | None, t: int) -> Row:
    row = Row(method, n_targets=n_targets or t, scale=t / (n_targets or t))
    for _ in range(repeats):
        cmd = [sys.executable, __file__, "--child", method, "--workdir", str(workdir)]
        if n_targets is not None:
            cmd += ["--child-targets", str(n_targets)]
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        row.runs.append(res["seconds"])
        row.peak_rss = max(row.peak_rss, res["peak_rss"])
        print(f"{method}: {res['seconds']:.1f} s, peak RSS {res['peak_rss'] / 1e9:.2f} GB", file=sys.stderr)
    return row


def compare(workdir: Path, method: str, reference: str) -> tuple[float, float]:
    """Fraction of targets with the same α as ``reference``, and the max |coef difference| (on common targets)."""
    a, b = np.load(workdir / f"alphas_{method}.npy"), np.load(workdir / f"alphas_{reference}.npy")
    ca, cb = np.load(workdir / f"coef_{method}.npy"), np.load(workdir / f"coef_{reference}.npy")
    m = min(len(a), len(b))
    return float(np.isclose(a[:m], b[:m], rtol=1e-6).mean()), float(np.abs(ca[:, :m] - cb[:, :m]).max())


def table(rows: list[Row], workdir: Path) -> str:
    ref = next(r for r in rows if r.method == "himalaya")
    exact = any(r.method == "himalaya64" for r in rows)
    lines = [
        "| method | targets run | median s | runs s | ratio vs himalaya | peak RSS GB | same α as himalaya | "
        f"max abs coef diff vs himalaya |{' same α as himalaya64 |' if exact else ''} target |",
        f"|---|---:|---:|---|---:|---:|---:|---:|{'---:|' if exact else ''}---|",
    ]
    for r in rows:
        agree, diff = compare(workdir, r.method, "himalaya")
        agree64 = compare(workdir, r.method, "himalaya64")[0] if exact else agree
        ratio = r.median / ref.median
        if r.method == "ours":
            met = ratio <= TARGET_RATIO and agree64 >= TARGET_AGREE and r.peak_rss <= TARGET_RSS
            verdict = "met" if met else "missed"
        else:
            verdict = ""
        scaled = f" (× {r.scale:.2f})" if r.scale != 1 else ""
        lines.append(
            f"| {r.method} | {r.n_targets:,} | {r.median:.1f}{scaled} | {', '.join(f'{s:.1f}' for s in r.runs)} | "
            f"{ratio:.3f} | {r.peak_rss / 1e9:.2f} | {100 * agree:.2f}% | {diff:.2g} |"
            f"{f' {100 * agree64:.2f}% |' if exact else ''} {verdict} |"
        )
    return "\n".join(lines)


def versions() -> str:
    import himalaya
    import sklearn

    blas = ""
    try:
        from threadpoolctl import threadpool_info

        info = threadpool_info()[0]
        blas = f", BLAS {info['internal_api']} {info['version']} ({info['num_threads']} threads)"
    except (ImportError, IndexError, KeyError):
        pass
    return f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, himalaya {himalaya.__version__}{blas}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8000, help="samples (images)")
    p.add_argument("--p", type=int, default=768, help="features")
    p.add_argument("--t", type=int, default=15_724, help="targets (voxels)")
    p.add_argument("--repeats", type=int, default=3, help="runs of ours; the median is reported")
    p.add_argument("--ref-repeats", type=int, default=1, help="runs of himalaya and sklearn (each takes minutes)")
    p.add_argument("--sklearn-targets", type=int, help="run sklearn on this many voxels and scale its time")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="what to run (needs himalaya)")
    p.add_argument("--no-record", action="store_true", help=f"print the table only; leave {RESULTS.name} alone")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--child-targets", type=int, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.workdir, args.child_targets)
        return
    if "himalaya" not in args.methods:
        p.error("himalaya is the reference of every comparison; keep it in --methods")

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-ridge-") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        X, Y, alphas = make_problem(args.n, args.p, args.t)
        for name, a in (("X", X), ("Y", Y), ("alphas", alphas)):
            np.save(workdir / f"{name}.npy", a)
        del X, Y
        print(f"problem {args.n} × {args.p} × {args.t} written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        rows = [
            measure(
                m,
                workdir,
                args.repeats if m == "ours" else args.ref_repeats,
                args.sklearn_targets if m == "sklearn" else None,
                args.t,
            )
            for m in args.methods
        ]
        body = table(rows, workdir)
        best = np.load(workdir / "alphas_himalaya.npy")
        at_edge = float(np.isin(best, alphas[[0, -1]]).mean())
        spread = len(np.unique(best))

    notes = [
        f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; code: {code_version(TIMED_CODE)}",
        f"machine: {machine(versions())}; 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        "(other work on the machine slows every method)",
        f"command: `{shlex.join(['python', 'bench/ridge.py', *sys.argv[1:]])}`",
        f"problem: n = {args.n:,}, p = {args.p}, t = {args.t:,} float32; 5-fold KFold (unshuffled), "
        f"13 α = logspace(-1, 5) × mean eigenvalue of XᵀX / 100; himalaya chose {spread} distinct α, "
        f"{100 * at_edge:.1f}% of voxels at a grid edge",
        "median s: median over runs (ours) or the single run (references); ratio = median / himalaya's median; "
        "peak RSS = max over runs of the child's ru_maxrss (includes the 0.5 GB Y); same α = fraction of voxels "
        "whose α equals himalaya's (float32, the timed run) or himalaya64's (float64, the exact criterion); sklearn's "
        "α come from leave-one-out (GCV), a different criterion",
        f"targets for ours: ratio ≤ {TARGET_RATIO}, same α as himalaya64 ≥ {100 * TARGET_AGREE:.1f}%, "
        f"peak RSS ≤ {TARGET_RSS / 1e9:.0f} GB",
    ]
    text = "\n".join(
        [HEADING + ": RidgeCV (per-voxel α, 5-fold CV) vs himalaya and scikit-learn", "", *(f"- {n}" for n in notes)]
    )
    text += "\n\n" + body + "\n"
    report(args, HEADING, text)


if __name__ == "__main__":
    main()
