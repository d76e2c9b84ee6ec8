"""What the Snakefile decides at parse time, checked with dry runs: no heavy imports, the kit choice, per-encoder
params, and real-data configs that plan no simulator."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from brainatt.models.kit import kit_in_use
from brainatt.synth.world import WorldSpec

REPO = Path(__file__).resolve().parents[1]
SIMULATOR_RULES = ("synthesize", "kit_eval", "kit")


def _run(cwd: Path, *args: str, python: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, *python, "-m", "snakemake", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _demo_dry_run(
    *args: str, python: tuple[str, ...] = (), override: dict | None = None, tmp: Path | None = None
) -> str:
    """A dry run of the demo from the repository root (shell commands printed, every job planned whatever results/
    already holds), with ``override`` merged into the demo config; its whole output."""
    configs = ()
    if override:
        (tmp / "override.yaml").write_text(yaml.safe_dump(override))
        configs = ("--configfile", "config/config.yaml", str(tmp / "override.yaml"))
    run = _run(REPO, "-n", "-p", "--forceall", "--cores", "1", *args, *configs, python=python)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout + run.stderr


def _planned_rules(output: str) -> set[str]:
    return set(re.findall(r"^rule (\w+):", output, re.M)) | set(re.findall(r"^localrule (\w+):", output, re.M))


def test_parsing_imports_neither_the_package_nor_torch() -> None:
    imported = _demo_dry_run(python=("-X", "importtime"))
    modules = {m.group(1) for m in re.finditer(r"^import time:.*\|\s+([\w.]+)\s*$", imported, re.M)}
    assert modules, "no -X importtime output"
    assert not {m for m in modules if m.split(".")[0] in ("torch", "brainatt")}


@pytest.mark.parametrize("image_size", [64, 32])
def test_parse_time_kit_choice_equals_kit_in_use(image_size: int, tmp_path: Path) -> None:
    output = _demo_dry_run(
        "results/tables/kit_quality.tsv", override={"synth": {"image_size": image_size}}, tmp=tmp_path
    )
    kit = re.search(r"brainatt kit-eval --kit '?([^' ]+)'?", output).group(1)
    assert kit == str(kit_in_use(image_size))
    assert ("kit" in _planned_rules(output)) == (kit == "results/kit")  # a stale kit is retrained first


def _encode_settings(output: str) -> dict[str, dict]:
    """Each encoder's --config JSON, from the dry run's printed encode commands (subject subj01)."""
    settings = {}
    for m in re.finditer(r"--encoder (\w+) --config '(\{.*?\})'", output):
        settings.setdefault(m.group(1), json.loads(m.group(2)))
    return settings


def test_encode_params_hold_only_the_encoders_own_section(tmp_path: Path) -> None:
    base = _encode_settings(_demo_dry_run())
    assert set(base) == {"transformer", "factorized", "ridge_pooled", "ridge_tokens"}
    assert base["transformer"] == {"seeds": [0], "transformer": {"patience": 5, "attention_entropy": 0.05}}
    assert base["ridge_pooled"] == base["ridge_tokens"] == {"seeds": [0], "ridge": {}}
    changed = _encode_settings(_demo_dry_run(override={"encoding": {"transformer": {"patience": 7}}}, tmp=tmp_path))
    assert {e for e in base if base[e] != changed[e]} == {"transformer"}  # only the transformer reruns
    shared = _encode_settings(_demo_dry_run(override={"encoding": {"split_seed": 3}}, tmp=tmp_path))
    assert all(shared[e] != base[e] for e in base)  # a shared key reruns every encoder


def test_synthesize_carries_the_package_world_version() -> None:
    """A new world version is a changed parameter of `synthesize`, so it rewrites the dataset and what follows."""
    from brainatt.synth.world import GENERATOR_VERSION

    output = _demo_dry_run("results/nsd-synth")
    assert f"--world-version {GENERATOR_VERSION} " in output


def test_clip_features_are_built_for_the_configured_clip_only() -> None:
    output = _demo_dry_run("results/features/clip/kit-clip.h5")
    assert "brainatt features --role clip" in output
    wrong = _run(REPO, "-n", "--cores", "1", "results/features/clip/ViT-B-16.h5")
    assert wrong.returncode != 0 and "results/features/clip/kit-clip.h5" in wrong.stdout + wrong.stderr


def test_mindbridge_is_in_the_default_target_on_the_encoders_clip_features(tmp_path: Path) -> None:
    output = _demo_dry_run()
    assert {"mindbridge_bridge", "mindbridge_adapt", "mindbridge_recon_table"} <= _planned_rules(output)
    # the backbone role is the same CLIP model: its feature file's pooled embeddings are the image targets
    assert "--image-features results/features/backbone/kit-clip.h5" in output
    assert "--image-features results/features/clip/" not in output  # no second pass of the same model
    off = _demo_dry_run(override={"mindbridge": {"in_all": False}}, tmp=tmp_path)
    assert "mindbridge_bridge" not in _planned_rules(off)


def test_scuba_is_in_the_default_target_for_its_subjects_and_buildable_by_name(tmp_path: Path) -> None:
    output = _demo_dry_run()
    for command in ("brainatt synth-candidates", "scuba-candidates --source synth", "brainatt scuba ", "scuba-summary"):
        assert command in output
    assert "results/scuba/candidates/kit-clip.h5" in output
    assert "--subject subj01" in output and "results/scuba/subj02" not in output  # the demo captions one subject
    assert "--braindive results/tables/braindive_images.tsv" in output  # BrainDiVE's images beside, same subject
    off = _demo_dry_run(override={"scuba": {"in_all": False}}, tmp=tmp_path)
    assert "brainatt scuba" not in off
    assert "brainatt scuba " in _demo_dry_run("results/tables/scuba_nouns.tsv", override={"scuba": {"in_all": False}},
                                              tmp=tmp_path)  # fmt: skip


def test_scuba_candidates_come_from_the_configured_source(tmp_path) -> None:
    folder = tmp_path / "coco"
    folder.mkdir()
    override = {"scuba": {"candidates": {"source": "folder", "path": str(folder)}}}
    output = _demo_dry_run("results/scuba/candidates/kit-clip.h5", override=override, tmp=tmp_path)
    assert f"scuba-candidates --source folder --path {folder}" in output and "synth-candidates" not in output
    (tmp_path / "override.yaml").write_text(yaml.safe_dump({"scuba": {"candidates": {"source": "embeddings"}}}))
    run = _run(REPO, "-n", "--cores", "1", "--configfile", "config/config.yaml", str(tmp_path / "override.yaml"))
    assert run.returncode != 0 and "path" in run.stdout + run.stderr  # the schema asks for the file


def test_scuba_captioner_training_is_built_by_name_only(tmp_path) -> None:
    output = _demo_dry_run("results/scuba/captioner/captioner")
    assert "brainatt train-captioner --stimuli results/stimuli/images.h5" in output and "--gpt2" not in output
    override = {"scuba": {"train_captioner": {"gpt2": "/models/gpt2", "lr": 2e-5}}}
    output = _demo_dry_run("results/scuba/captioner/captioner", override=override, tmp=tmp_path)
    assert "--gpt2 /models/gpt2" in output and '"lr": 2e-05' in output
    assert "train-captioner" not in _demo_dry_run()


def _copy_workflow(dest: Path) -> Path:
    """The repository's workflow files (what a user runs from the repository root), without results."""
    for name in ("Snakefile", "workflow", "config", "profiles", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    for data in ("brainatt/kit/manifest.json", "brainatt/synth/generator.json", "brainatt/synth/world_version.json"):
        (dest / data).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / data, dest / data)
    return dest


@pytest.mark.parametrize(("configfile", "layout"), [("config/nsd.yaml", "nsd"), ("config/algonauts.yaml", "algonauts")])
def test_readme_command_on_real_data_plans_no_simulator(
    tiny_world: Path, tiny_spec: WorldSpec, tmp_path: Path, configfile: str, layout: str
):
    """`snakemake --configfile config/<real>.yaml --cores all` reads only that config (not the demo's).

    The data root holds a small tree of the config's layout at the config's path; no --config overrides are needed
    because a dry run reads nothing from the data root (the config lists subjects the tree lacks, which is fine).
    """
    work = _copy_workflow(tmp_path)
    root = work / yaml.safe_load((work / configfile).read_text())["dataset"]["root"]
    root.parent.mkdir(parents=True)
    if layout == "nsd":
        root.symlink_to(tiny_world, target_is_directory=True)
    else:
        from brainatt.synth.algonauts import write_synth_algonauts

        write_synth_algonauts(tiny_spec, root)
    run = _run(work, "--configfile", configfile, "--cores", "all", "-n", "-p")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    rules = _planned_rules(output)
    assert {"preprocess", "stimuli", "features", "encode", "encoding_summary", "encoding_figures"} <= rules
    assert not rules & set(SIMULATOR_RULES)
    assert "ground_truth" not in output and "--truth" not in output and "config/config.yaml" not in output
    assert "results/features/backbone/facebook-dinov2-base.h5" in output
