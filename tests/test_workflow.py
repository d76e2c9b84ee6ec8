"""The Snakemake DAG end to end on a tiny nsd-synth world, in a temporary working directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from brainatt.contracts.features import FeatureCache
from brainatt.encoding.data import load_subject
from brainatt.encoding.encoders import load_encoder
from brainatt.encoding.train import predict
from brainatt.synth.algonauts import SYNTH_ATLASES, write_synth_algonauts
from brainatt.synth.world import WorldSpec

if TYPE_CHECKING:
    from browser import Browser
    from slurm_cluster import Cluster

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = {
    "dataset": {
        "root": "results/nsd-synth",
        "subjects": ["subj01", "subj02"],
        "atlases": ["prf-visualrois", "floc-faces", "nsdgeneral"],
    },
    "synth": {
        "seed": 1,
        "n_subjects": 2,
        "n_train": 40,
        "n_shared": 12,
        "image_size": 32,
        "trials_per_session": 52,
        "sessions_kept": [1.0, 0.75],
        "voxel_mm": 6.0,
    },
    "models": {"backbone": {"name": "kit:clip", "source": "open_clip", "layers": [-1]}},
    "encoding": {
        "seeds": [0],
        # per-voxel queries in retinotopic ROIs, ROI queries elsewhere: the figures and routing.tsv must still give
        # one row per ROI
        "transformer": {"epochs": 2, "heads": 4, "ff": 32, "queries": "retinotopic-voxel"},
        "factorized": {"epochs": 2},
        "ridge": {"folds": 3, "pca": 8, "n_alphas": 5},
    },
    # MindBridge is in the default target: one limited-data share, tiny models, 2 reconstructions of 2 steps.
    "mindbridge": {
        "percent": [50],
        "finetune": False,
        "gallery_images": 2,
        "recon": {"steps": 2},
        "model": {"pool": 16, "hidden": 16, "blocks": 1, "adapter": 4},
        "train": {"epochs": 1},
        "adapt": {"epochs": 1, "steps": 2},
    },
    # 32-px images: the shipped (64-px) kit does not match, so the DAG must retrain a (tiny) kit.
    "kit": {
        "n_images": 200,
        "vocab_size": 300,
        "eval_images": 100,
        "clip": {"steps": 3, "batch": 16, "vision_layers": 1, "text_layers": 1},
        "captioner": {"steps": 3, "batch": 8, "layers": 1},
        "diffusion": {
            "steps": 2,
            "batch": 4,
            "channels": [16, 32],
            "space_to_depth": 2,
            "sample_steps": 2,
            "eval_per_category": 2,
        },
    },
}


def _snakemake(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(env or os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--cores",
        "2",
        *args,
    ]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny config run locally once (and its report); the cluster test compares its tables to these."""
    workdir = tmp_path_factory.mktemp("tiny")
    (workdir / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    run = _snakemake(workdir)
    assert run.returncode == 0, run.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_tiny_pipeline_runs_end_to_end(tiny_run: Path) -> None:
    for subject in ("subj01", "subj02"):
        with h5py.File(tiny_run / f"results/prep/{subject}/responses.h5") as f:
            assert f["train/betas"].shape[1] == f["voxels/ijk"].shape[0] > 0
            assert len(f["test/nsd_ids"]) == 12
            assert f.attrs["config_hash"]
    with h5py.File(tiny_run / "results/stimuli/images.h5") as f:
        assert f["images"].shape[1:] == (32, 32, 3) and f["captions"].shape[0] == len(f["nsd_ids"])
    assert (tiny_run / "results/kit/manifest.json").exists()  # stale shipped kit → retrained
    kit = pd.read_csv(tiny_run / "results/tables/kit_quality.tsv", sep="\t")
    assert {"clip_zero_shot_5way", "captioner_names_present", "diffusion_zero_shot_5way"} <= set(kit.metric)
    encoding = pd.read_csv(tiny_run / "results/tables/encoding.tsv", sep="\t")
    assert set(encoding.encoder) == {"transformer", "factorized", "ridge_pooled", "ridge_tokens"}
    assert set(encoding.subject) == {"subj01", "subj02"}
    assert encoding.loc[encoding.roi == "all", "r_truth"].notna().all()
    routing = pd.read_csv(tiny_run / "results/tables/routing.tsv", sep="\t")
    against_truth = {"mass_ratio", "truth_mass_ratio", "distance", "variability", "truth_variability", "mixed"}
    baselines = {"mass_ratio_static", "mass_ratio_best_static", "over_best_static", "mass_ratio_name_only"}
    weighted = {"mass_ratio_weighted", "variability_weighted", "distance_weighted", "distance_name_only"}
    assert {"query", "truth", *against_truth, *baselines, *weighted} <= set(routing.columns)
    recovery = pd.read_csv(tiny_run / "results/tables/prf_recovery.tsv", sep="\t")
    assert set(recovery.encoder) == {"transformer", "factorized", "ridge_tokens"}
    assert {"median_error", "median_error_name_only", "median_error_roi_mean", "closer_than_name_only"} <= set(
        recovery.columns
    )
    scores = pd.read_csv(tiny_run / "results/encoding/subj01/transformer/voxel_scores.tsv", sep="\t")
    by_voxel = scores.sort_values("voxel")
    labels = (by_voxel["hemi"] + "." + by_voxel["roi"]).to_numpy()
    assert set(routing.loc[routing.subject == "subj01", "query"]) == set(labels)
    with h5py.File(tiny_run / "results/encoding/subj01/transformer/attention.h5") as f:
        queries, voxel_query = f["queries"][()].astype(str), f["voxel_query"][()]
        assert len(voxel_query) == len(labels) and len(queries) > len(set(labels))  # a query per retinotopic voxel
        assert [queries[q].partition("#")[0] for q in voxel_query] == labels.tolist()  # each voxel reads its own
        assert f["maps"].shape[1:] == (12, 4, 4)  # 12 test images, 32 px / patch 8
        assert f["maps_head_mean"].shape == f["maps"].shape
        importance = f["head_importance"][()]  # (member, image, head, query): sums to 1 over heads
        assert importance.shape[:3] == (1, 12, 4) and np.allclose(importance.sum(2, dtype=np.float64), 1, atol=5e-3)
    # The fitted member reloads from its files and reproduces the written test predictions (one member: weight 1).
    folder = tiny_run / "results/encoding/subj01/transformer"
    sub = load_subject(tiny_run / "results/prep/subj01/responses.h5")
    cache = FeatureCache(tiny_run / "results/features/backbone/kit-clip.h5")
    x = torch.from_numpy(cache.tokens(cache.layers[0], sub.test_ids))
    encoder = load_encoder(folder)
    assert [m["layer"] for m in encoder.member_info_] == cache.layers and len(encoder.members_) == 1
    with h5py.File(folder / "test_pred.h5") as f:
        np.testing.assert_allclose(predict(encoder.members_[0], x), f["pred"][()], atol=1e-5)
    for subject in ("subj01", "subj02"):
        for figure in ("encoding_brain_maps.png", "encoding_voxel_scatter.png", "encoding_attention.png"):
            assert (tiny_run / f"results/figures/{subject}/{figure}").stat().st_size > 1000
    decoding = pd.read_csv(tiny_run / "results/tables/mindbridge.tsv", sep="\t")
    assert {"single", "bridge", "reset", "scratch"} == set(decoding.regime)
    assert len(pd.read_csv(tiny_run / "results/tables/mindbridge_recon.tsv", sep="\t")) == 2  # subj01, subj02
    table = pd.read_csv(tiny_run / "results/tables/prep.tsv", sep="\t")
    assert list(table.subject) == ["subj01", "subj02"]
    assert table.n_sessions.tolist() == [3, 2]  # subj02 completed 75% of the sessions
    # Nothing left to do on a second run; a report renders (opened in a browser below).
    assert "Nothing to be done" in _snakemake(tiny_run, "-n").stdout + _snakemake(tiny_run, "-n").stderr
    _report(tiny_run)


def _report(workdir: Path) -> Path:
    report = workdir / "report.html"
    if not report.exists():
        run = _snakemake(workdir, "--report", str(report))
        assert run.returncode == 0, run.stderr[-2000:]
    assert report.stat().st_size > 10_000
    return report


@pytest.mark.slow
def test_report_holds_every_figure_and_table_and_opens_in_a_browser(tiny_run: Path, chromium: Browser) -> None:
    """`snakemake --report report.html` opened from the file system in chromium: every figure and table of the
    run is in it, in a category per stage and a subcategory per subject (or all subjects), with a caption, and
    every image loads. The screenshot of its first page lands next to it (report.png)."""
    from browser import report_results

    rows, broken = report_results(chromium, _report(tiny_run), tiny_run / "report.png")
    print(f"report screenshot: {tiny_run / 'report.png'}")
    assert not broken and (tiny_run / "report.png").stat().st_size > 10_000
    by_path = {row["path"]: row for row in rows}
    users_look_at = sorted(
        str(p.relative_to(tiny_run)) for d in ("tables", "figures") for p in (tiny_run / "results" / d).rglob("*.*")
    )
    assert sorted(by_path) == users_look_at
    for path, row in by_path.items():
        assert row["caption"].strip() and row["category"], path
        assert row["loads"] is not False and not row["broken"], path
    categories = {tuple(row["category"]) for row in rows}
    assert {("Encoding", "subj01"), ("Encoding", "subj02"), ("Encoding", "All subjects")} <= categories
    assert {c for c, _ in categories} == {"Preprocessing", "Models", "Encoding", "MindBridge"}
    assert by_path["results/figures/subj02/encoding_attention.png"]["category"] == ["Encoding", "subj02"]
    assert "subj02" in by_path["results/figures/subj02/encoding_attention.png"]["caption"]  # its own subject named


@pytest.mark.slow
def test_tiny_algonauts_pipeline_runs_end_to_end(tmp_path: Path) -> None:
    """Surface data (no volume coordinates) through the whole DAG, as real Algonauts data: no synth section."""
    spec = WorldSpec(seed=2, n_subjects=2, n_train=40, n_shared=12, image_size=32, trials_per_session=52, voxel_mm=6.0)
    write_synth_algonauts(spec, tmp_path / "data/algonauts")
    config = {
        "dataset": {
            "layout": "algonauts",
            "root": "data/algonauts",
            "subjects": ["subj01", "subj02"],
            "mask": ["all-vertices"],
            "atlases": SYNTH_ATLASES,
        },
        "models": TINY_CONFIG["models"],
        "encoding": {**TINY_CONFIG["encoding"], "transformer": {"epochs": 2, "heads": 2, "ff": 32}},
        "mindbridge": {"in_all": False},  # as config/algonauts.yaml: no single trials, no captions
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run = _snakemake(tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    encoding = pd.read_csv(tmp_path / "results/tables/encoding.tsv", sep="\t")
    assert set(encoding.encoder) == {"transformer", "factorized", "ridge_pooled", "ridge_tokens"}
    assert set(encoding.subject) == {"subj01", "subj02"}
    assert encoding.loc[encoding.roi == "all", "r_truth"].isna().all()  # no ground truth for real-data layouts
    assert not (tmp_path / "results/tables/routing.tsv").exists()
    assert not (tmp_path / "results/kit").exists() and not (tmp_path / "results/tables/kit_quality.tsv").exists()
    for subject in ("subj01", "subj02"):
        figures = sorted(p.name for p in (tmp_path / f"results/figures/{subject}").iterdir())
        assert figures == ["encoding_attention.png", "encoding_voxel_scatter.png"]  # no brain maps on a surface
    assert (tmp_path / "results/figures/encoding_accuracy_by_roi.png").stat().st_size > 1000


def test_config_with_unknown_key_is_rejected(tmp_path: Path) -> None:
    bad = {**TINY_CONFIG, "dataset": {**TINY_CONFIG["dataset"], "subjcts": ["subj01"]}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    run = _snakemake(tmp_path, "-n")
    assert run.returncode != 0
    assert "subjcts" in run.stderr + run.stdout


SLURM_PROFILE = REPO / "profiles/slurm"
# The cluster profile without the local workflow profile (profiles/default would override it), as docs/cluster.md
# says to run it.
SLURM_ARGS = ("--profile", str(SLURM_PROFILE), "--workflow-profile", "none")


def test_slurm_profile_dry_runs(tmp_path: Path) -> None:
    pytest.importorskip("snakemake_executor_plugin_slurm")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    run = _snakemake(tmp_path, "-n", *SLURM_ARGS)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "preprocess" in run.stdout + run.stderr


def test_slurm_profile_sizes_every_rule_and_scales_memory_by_attempt() -> None:
    """Every rule with a command has an entry (so a new rule cannot go to the cluster with its demo-sized
    resources), and every memory request grows with the attempt that a retry makes."""
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    rules = set()
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        for block in re.split(r"^\s*rule ", smk.read_text(), flags=re.M)[1:]:
            if re.search(r"^\s+shell:", block, flags=re.M):
                rules.add(block.split(":", 1)[0].strip())
    assert rules and set(profile["set-resources"]) == rules
    for rule, resources in profile["set-resources"].items():
        assert re.fullmatch(r"\d+ \* attempt", resources["mem_mb"]), rule
        assert resources["runtime"] > 0 and resources.get("gpu", 0) in (0, 1), rule
    assert profile["retries"] >= 1 and profile["slurm-logdir"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A single-node SLURM on localhost (tests/slurm_cluster.py); its daemons stop when the module's tests end."""
    import slurm_cluster

    pytest.importorskip("snakemake_executor_plugin_slurm")
    reason = slurm_cluster.unavailable()
    if reason:
        pytest.skip(f"no local SLURM: {reason}")
    cluster = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.slow
def test_tiny_pipeline_on_slurm_equals_the_local_run(tiny_run: Path, slurm: Cluster, tmp_path: Path) -> None:
    """The tiny config through a real SLURM with the cluster profile: every job is an sbatch job that completes,
    the GPU rules ask for a GPU, and the tables are byte-identical to the local run's."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    run = _snakemake(
        tmp_path,
        *SLURM_ARGS,
        # no accounting database here: job states from squeue; a quick first status check for short jobs
        "--slurm-status-command=squeue",
        "--slurm-init-seconds-before-status-checks=2",
        "--slurm-keep-successful-logs",
        env=slurm.env,
    )
    assert run.returncode == 0, run.stderr[-4000:] + slurm.log_tails()
    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", run.stderr))
    jobs = slurm.jobs()
    lines = [f"{j['id']:>5} {j['state']:<10} {j['tres']:<11} {j['memory']:>8} {j['comment']}" for j in jobs]
    (tmp_path / "slurm_jobs.txt").write_text("\n".join(lines) + "\n")
    print("SLURM jobs (squeue --states=all):", *lines, sep="\n")
    # Snakemake's job stats count every job of the run; only `all` (no command) stays local.
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", run.stderr.split("Job stats:")[1].split("\n\n")[0], flags=re.M))
    rules = {rule: int(n) for rule, n in stats.items() if rule not in ("all", "total")}
    assert len(submitted) == sum(rules.values()) == len(jobs) and sorted(submitted.values()) == sorted(
        j["id"] for j in jobs
    )
    assert {j["state"] for j in jobs} == {"COMPLETED"}
    ran = pd.Series([re.match(r"rule_(\w+?)(?:_wildcards_|$)", j["comment"]).group(1) for j in jobs])
    assert ran.value_counts().to_dict() == rules
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())["set-resources"]
    for rule, job in zip(ran, jobs, strict=True):
        assert (job["tres"] == "gres:gpu:1") == bool(profile[rule].get("gpu")), (rule, job)
        asked = float(job["memory"][:-1]) * {"M": 1, "G": 1024, "T": 1024**2}[job["memory"][-1]]
        assert asked == int(profile[rule]["mem_mb"].split()[0]), (rule, job)  # the first attempt's memory
        assert list((tmp_path / "logs/slurm" / f"rule_{rule}").rglob(f"{job['id']}.log")), (rule, job)
    local, cluster = (sorted(p.name for p in (d / "results/tables").iterdir()) for d in (tiny_run, tmp_path))
    assert local == cluster and "encoding.tsv" in local
    for name in local:
        assert (tmp_path / "results/tables" / name).read_bytes() == (tiny_run / "results/tables" / name).read_bytes()
