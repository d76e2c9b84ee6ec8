"""The conda environments (`envs/*.yaml`, one per stage family) agree with pyproject.toml, and every rule's
environment holds what its `brainatt` command imports."""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))
# conda-forge names of PyPI distributions that are packaged under another name
CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
# import names of distributions whose module is named differently
MODULE_TO_PYPI = {"PIL": "pillow", "sklearn": "scikit-learn", "open_clip": "open-clip-torch", "yaml": "pyyaml"}


def _spec(text: str) -> str:
    """A version range in one spelling: comparisons sorted, no spaces."""
    return ",".join(sorted(part.strip() for part in text.split(",") if part.strip()))


def _pyproject() -> tuple[dict[str, str], str]:
    """Canonical name → version range of every runtime and build requirement; the Python range."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = [Requirement(r) for r in project["project"]["dependencies"] + project["build-system"]["requires"]]
    return {canonicalize_name(r.name): _spec(str(r.specifier)) for r in reqs}, project["project"]["requires-python"]


def _env(path: Path) -> dict[str, str]:
    """Canonical PyPI name → version range of an environment file's conda packages."""
    out = {}
    for dep in yaml.safe_load(path.read_text())["dependencies"]:
        assert isinstance(dep, str), f"{path.name}: no pip section; the package comes from the post-deploy script"
        name, _, spec = dep.partition(" ")
        out[canonicalize_name(CONDA_TO_PYPI.get(name, name))] = _spec(spec)
    return out


def test_every_env_takes_names_and_ranges_from_pyproject() -> None:
    assert {p.stem for p in ENVS} == {"prep", "report", "torch"}
    declared, python = _pyproject()
    for path in ENVS:
        env = _env(path)
        assert python in env.pop("python").split(","), f"{path.name}: python range lacks requires-python {python}"
        assert env.pop("pip") == ""
        for name, spec in env.items():
            assert name in declared, f"{path.name}: {name} is not a dependency in pyproject.toml"
            assert spec == declared[name], f"{path.name}: {name} {spec!r}, pyproject.toml says {declared[name]!r}"
        script = path.with_suffix(".post-deploy.sh")
        assert "--no-deps" in script.read_text() and "BRAINATT_SOURCE" in script.read_text()
    everything = set().union(*(_env(p) for p in ENVS)) - {"python", "pip", "setuptools", "wheel"}
    workflow_only = {"snakemake", "pyyaml", "jsonschema"}  # used by Snakemake itself, never by a job
    assert everything == set(declared) - {"setuptools", "wheel"} - workflow_only


@functools.cache
def _module_imports(name: str) -> tuple[str, ...]:
    """Every import in a brainatt module (module- and function-level); none for a name that is not a module."""
    base = REPO / name.replace(".", "/")
    path = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
    return tuple(_imports(ast.parse(path.read_text()))) if path.exists() else ()


def _third_party_imports(start: set[str]) -> set[str]:
    """Top-level third-party modules reachable from ``start`` through brainatt modules' imports (module- and
    function-level alike: lazy imports count, so the answer is an upper bound)."""
    seen, found, todo = set(), set(), list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name.split(".")[0] != "brainatt":
            found.add(name.split(".")[0])
            continue
        todo += _module_imports(name)
    return found - set(sys.stdlib_module_names)


def _imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return names


@functools.cache
def _commands() -> dict[str, frozenset[str]]:
    """`brainatt` subcommand → the third-party modules its handler can import (with the CLI module's own)."""
    text = (REPO / "brainatt/cli.py").read_text()
    cli = ast.parse(text)
    handlers = {f.name: f for f in cli.body if isinstance(f, ast.FunctionDef) and f.name.startswith("cmd_")}
    own = {n for node in cli.body if isinstance(node, ast.Import | ast.ImportFrom) for n in _imports(node)}
    names = re.findall(r'add\(\s*"([\w-]+)",\s*(cmd_\w+)', text)
    return {name: frozenset(_third_party_imports(own | set(_imports(handlers[func])))) for name, func in names}


def _rules() -> list[tuple[str, str | None, str | None]]:
    """(rule, environment family, brainatt subcommand) of every rule in workflow/rules/."""
    rules = []
    for path in sorted((REPO / "workflow/rules").glob("*.smk")):
        blocks = re.split(r"^\s*(?:rule|checkpoint) (\w+):\n", path.read_text(), flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2], strict=True):
            env = re.search(r'ENVS\["(\w+)"\]', body)
            command = re.search(r'"(?:OMP_NUM_THREADS=\{threads\} )?brainatt ([\w-]+)', body)
            rules.append((name, env and env.group(1), command and command.group(1)))
    return rules


@pytest.mark.parametrize("rule, family, command", _rules(), ids=lambda x: str(x))
def test_each_rules_env_holds_what_its_command_imports(rule: str, family: str | None, command: str | None) -> None:
    if command is None:
        return  # a rule that runs no brainatt command (none today) needs no package environment
    assert family is not None, f"rule {rule} runs `brainatt {command}` but names no conda environment"
    env = set(_env(REPO / f"envs/{family}.yaml"))
    needed = {canonicalize_name(MODULE_TO_PYPI.get(m, m)) for m in _commands()[command]}
    assert needed <= env, f"rule {rule} (`brainatt {command}`): envs/{family}.yaml lacks {sorted(needed - env)}"


def test_rules_cover_every_command_they_run() -> None:
    rules = _rules()
    assert {family for _, family, command in rules if command} <= {"prep", "report", "torch"}
    assert {"preprocess", "encode", "braindive", "mindbridge"} <= {command for *_, command in rules}
