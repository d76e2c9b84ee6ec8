"""MindBridge: reset-tuning against training from scratch on the held-out subject, over several seeds.

Uses the demo's outputs (responses, CLIP targets and the cross-subject model in ``results/``) and its config's
``mindbridge`` section. For each seed and each limited-data share N it trains reset-tuning (from the cross-subject
model) and a from-scratch model on the target's first N % of training images, and scores both on

- validation: the target's **last** ``--val`` % of training images in the order shown (never among the first
  47 %), their trials averaged like the test images: what hyper-parameters may be chosen on;
- test: the repeat-averaged shared images, as the pipeline's table (reported, never chosen on).

It writes one row per run to ``--table`` and prints the mean and SD over seeds of reset − scratch image-retrieval
top-1 per N. ``--adapt`` / ``--lr`` override the config's limited-data settings for a validation search.

    python bench/mindbridge_adapt.py --seeds 0 1 2 3 4 [--adapt '{"lr": 3e-4}'] [--table out.tsv] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import code_version, machine, report

from brainatt.mindbridge.data import SubjectData, load_subject, load_targets
from brainatt.mindbridge.evaluate import evaluate_subject
from brainatt.mindbridge.model import MindBridgeConfig
from brainatt.mindbridge.train import TrainConfig, load_model, train_regime

ROOT = Path(__file__).resolve().parents[1]


def validation_split(data: SubjectData, share: float) -> tuple[SubjectData, SubjectData]:
    """(the subject without its last ``share`` of training images shown, those images' trials averaged)."""
    order = data.train_images()
    held = order[len(order) - round(share * len(order)) :]
    keep = ~np.isin(data.trial_ids, held)
    val = np.stack([data.trials[data.trial_ids == i].mean(0) for i in held]).astype(np.float32)
    train = SubjectData(
        data.subject, data.trials[keep], data.trial_ids[keep], data.trial_session[keep], data.test, data.test_ids
    )
    return train, SubjectData(data.subject, train.trials, train.trial_ids, train.trial_session, val, held)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(ROOT / "results"))
    p.add_argument("--config", default=str(ROOT / "config/config.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--val", type=float, default=20.0, help="validation: the last this %% of training images")
    p.add_argument("--adapt", default="{}", help="JSON overrides of mindbridge.adapt (limited-data runs)")
    p.add_argument("--table", help="write one row per run here (TSV)")
    p.add_argument("--merge", nargs="+", help="summarise these --table files (runs split over processes) instead")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = yaml.safe_load(Path(args.config).read_text())
    mb = cfg.get("mindbridge", {})
    subjects = cfg["dataset"]["subjects"]
    target = mb.get("target", subjects[-1])
    percents = mb.get("percent", [6, 18, 47])
    adapt = {**mb.get("train", {}), **mb.get("adapt", {}), **json.loads(args.adapt)}
    model_cfg = MindBridgeConfig.from_config(mb.get("model", {}))
    res = Path(args.results)
    if args.merge:
        table = pd.concat([pd.read_csv(t, sep="\t") for t in args.merge], ignore_index=True)
        args.seeds = sorted(table.seed.unique().tolist())
        summarise(args, table, adapt, percents)
        return
    data = {s: load_subject(res / f"prep/{s}/responses.h5", s) for s in subjects}
    full, val = validation_split(data[target], args.val / 100)
    n_train = len(data[target].train_images())  # N is a share of all the target's training images, as the pipeline
    ids = np.concatenate([np.concatenate([d.trial_ids, d.test_ids]) for d in data.values()])
    targets = load_targets(res / "features/backbone/kit-clip.h5", res / "features/clip_text/kit-clip.h5", ids)
    rows = []
    for seed in args.seeds:
        train_cfg = TrainConfig.from_config({**adapt, "seed": seed})
        for pct in percents:
            limited = full.limit(max(1, round(pct / 100 * n_train)))
            for regime in ("reset", "scratch"):
                t0 = time.process_time()
                if regime == "reset":
                    run_data = {**{s: data[s] for s in subjects if s != target}, target: limited}
                    model, _ = train_regime(
                        "reset", run_data, targets, model_cfg, train_cfg, target, load_model(res / "mindbridge/bridge")
                    )
                else:
                    model, _ = train_regime("single", {target: limited}, targets, model_cfg, train_cfg)
                model.cpu()
                test, _ = evaluate_subject(model, limited, targets)
                on_val, _ = evaluate_subject(model, val, targets)
                rows.append(
                    {
                        "seed": seed,
                        "percent": pct,
                        "n_images": len(limited.train_images()),
                        "regime": regime,
                        "val_top1": on_val["image_retrieval"],
                        "val_cosine": on_val["cosine"],
                        "test_top1": test["image_retrieval"],
                        "test_cosine": test["cosine"],
                        "cpu_s": time.process_time() - t0,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    if args.table:
        table.to_csv(args.table, sep="\t", index=False)
    summarise(args, table, adapt, percents)


def summarise(args: argparse.Namespace, table: pd.DataFrame, adapt: dict, percents: list[float]) -> None:
    """Mean ± SD over seeds of reset − scratch per N, on validation and test, into RESULTS.md."""
    wide = table.pivot_table(index=["seed", "percent"], columns="regime", values=["val_top1", "test_top1"])
    split = " (one process per seed, merged with --merge)" if args.merge else ""
    lines = [
        "## mindbridge_adapt",
        "",
        "Reset-tuning minus training from scratch on the held-out subject (image retrieval top-1, points), mean ± SD",
        f"over seeds {args.seeds} (the cross-subject model fixed); validation: the target's last {args.val:g} % of",
        "training images (trials averaged), test: the shared images (the pipeline's table).",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {len(table)} runs, {table.cpu_s.sum():.0f} CPU-s (1 thread)",
        f"- machine: {machine(f'torch {torch.__version__}')}",
        f"- command: `python bench/mindbridge_adapt.py --seeds {' '.join(map(str, args.seeds))} "
        f"--adapt '{json.dumps(json.loads(args.adapt))}'`{split}; "
        f"limited-data settings {json.dumps(adapt)}",
        f"- package code: {code_version(('brainatt/mindbridge/train.py', 'brainatt/mindbridge/model.py'))}",
        "",
        "| N % (images) | seeds | reset val | scratch val | gap val | reset test | scratch test | gap test |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pct in [p for p in percents if p in set(table.percent)]:
        w = wide.xs(pct, level="percent") * 100
        n = int(table.loc[table.percent == pct, "n_images"].iloc[0])
        cells = []
        for split in ("val_top1", "test_top1"):
            r, s = w[(split, "reset")], w[(split, "scratch")]
            gap = r - s
            cells += [f"{r.mean():.1f}", f"{s.mean():.1f}", f"{gap.mean():+.1f} ± {gap.std(ddof=1):.1f}"]
        lines.append(f"| {pct:g} ({n}) | {len(w)} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    report(args, "## mindbridge_adapt", text)


if __name__ == "__main__":
    main()
