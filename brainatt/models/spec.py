"""Model specs: what the config's ``models.<role>`` sections name, and where ``kit:`` names resolve.

Kept free of torch and the model libraries, so file contracts and the workflow can read and record specs cheaply.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainatt.io import BrainattError, file_hash

KIT_PREFIX = "kit:"
SHIPPED_KIT = Path(__file__).resolve().parents[1] / "kit"
KIT_MANIFEST = "manifest.json"
RERUN_KIT = "rerun the kit rule (`snakemake kit`, or `brainatt kit --out KIT`)"
SOURCES = ("open_clip", "dinov2", "diffusers", "captioner")
NO_WEIGHTS = "none"  # `pretrained: none`: a real architecture with random weights, asked for explicitly


def closest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` when a choice is close to ``word``, else nothing."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class ModelSpec:
    """A model role from the config.

    ``name`` is an open_clip model name (``ViT-B-16``), a Hugging Face id (``facebook/dinov2-base``), a local
    directory, or ``kit:<part>``; ``pretrained`` is the open_clip pretrained tag or a checkpoint file (required
    with an open_clip model name; ``none`` asks for random weights); ``layers`` (backbones) are the transformer
    blocks whose patch tokens are exposed: 0 … n-1, or -1 … -n counting from the end (checked against the model
    when it loads, see `block_indices`).
    """

    role: str
    name: str
    source: str = "open_clip"  # open_clip | dinov2 | diffusers | captioner
    pretrained: str | None = None
    layers: tuple[int, ...] = (-1,)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, role: str, cfg: dict[str, Any]) -> ModelSpec:
        """A spec from its config section, checked before anything loads (one line naming the key on error)."""
        where = f"models.{role}"
        if not isinstance(cfg, dict):
            raise BrainattError(f"{where}: expected a mapping with a name (e.g. {{name: 'kit:clip'}}), got {cfg!r}")
        keys = [f.name for f in dataclasses.fields(cls) if f.name != "role"]
        for key in cfg:
            if key not in keys:
                raise BrainattError(
                    f"{where}: unknown key {key!r}{closest(str(key), keys)}: the keys are {', '.join(keys)}"
                )
        cfg = dict(cfg)
        if not isinstance(cfg.get("name"), str) or not cfg["name"]:
            raise BrainattError(
                f"{where}.name: missing or empty: name an open_clip model, a hub id, a folder or kit:clip"
            )
        source = cfg.get("source", "open_clip")
        if source not in SOURCES:
            raise BrainattError(
                f"{where}.source: {source!r} is not a model source{closest(str(source), SOURCES)}: "
                f"choose from {', '.join(SOURCES)}"
            )
        pretrained = cfg.get("pretrained")
        if pretrained is not None and (not isinstance(pretrained, str) or not pretrained):
            raise BrainattError(
                f"{where}.pretrained: {pretrained!r} is not a pretrained tag or checkpoint file: "
                f"name one, or write `pretrained: {NO_WEIGHTS}` for random weights"
            )
        if "layers" in cfg:
            layers = cfg["layers"]
            if isinstance(layers, int) and not isinstance(layers, bool):
                layers = [layers]
            if (
                not isinstance(layers, list | tuple)
                or not layers
                or any(isinstance(x, bool) or not isinstance(x, int) for x in layers)
            ):
                raise BrainattError(
                    f"{where}.layers: {cfg['layers']!r} is not a list of block indices: give integers, "
                    "0 … n-1 or -1 … -n counting from the end"
                )
            cfg["layers"] = tuple(layers)
        if not isinstance(cfg.get("extra", {}), dict):
            raise BrainattError(f"{where}.extra: expected a mapping (image_size, mean, std), got {cfg['extra']!r}")
        return cls(role=role, **cfg)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        cfg = json.loads(text)
        return cls.from_config(cfg.pop("role"), cfg)


def resolved_spec(spec: ModelSpec, kit_dir: str | Path | None = None) -> ModelSpec:
    """``spec`` with a ``kit:`` name replaced by the absolute directory it resolves to (what a saved artifact records,
    so it reloads the same model whatever kit the reader's workflow would pick)."""
    name = resolve_kit(spec.name, kit_dir)
    if Path(name).is_dir():
        name = str(Path(name).resolve())
    return dataclasses.replace(spec, name=name)


def block_indices(spec: ModelSpec, n_blocks: int) -> list[int]:
    """``spec.layers`` as 0-based block indices of a model with ``n_blocks`` blocks.

    Index ``i`` is block ``i`` (0 … n-1) and ``-k`` the k-th block from the end (-1 … -n); anything else is
    refused, never wrapped round, and two entries naming the same block are refused too.
    """
    where = f"models.{spec.role}.layers"
    idx = []
    for layer in spec.layers:
        if not -n_blocks <= layer < n_blocks:
            raise BrainattError(
                f"{where}: layer {layer} is out of range for {spec.name}, which has {n_blocks} blocks: "
                f"use 0 … {n_blocks - 1}, or -1 … -{n_blocks} counting from the end"
            )
        idx.append(layer % n_blocks)
    if len(set(idx)) < len(idx):
        raise BrainattError(f"{where}: {list(spec.layers)} names a block twice in a {n_blocks}-block model: drop one")
    return idx


_HASHES: dict[tuple[str, int, int, int], str] = {}


def _cached_hash(path: Path) -> str:
    """sha256 of ``path``, computed once per process per (file, size, modification time)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_hash(path)
    return _HASHES[key]


def read_kit_manifest(kit_dir: str | Path) -> dict[str, Any]:
    """A kit's ``manifest.json``, checked to be whole (a truncated or hand-edited one is an error)."""
    path = Path(kit_dir) / KIT_MANIFEST
    if not path.exists():
        raise BrainattError(f"{path}: no kit manifest, so the kit's files cannot be checked: {RERUN_KIT}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BrainattError(f"{path}: the kit manifest is truncated or not JSON ({e}): {RERUN_KIT}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files or not all(isinstance(v, str) for v in files.values()):
        raise BrainattError(f"{path}: the kit manifest lists no file hashes ('files'): {RERUN_KIT}")
    return manifest


def verify_kit(kit_dir: str | Path, part: str | None = None) -> dict[str, Any]:
    """The manifest, after checking the sha256 of every file it lists (under ``part/`` only, if given)."""
    kit_dir = Path(kit_dir)
    manifest = read_kit_manifest(kit_dir)
    listed = [rel for rel in manifest["files"] if part is None or rel.startswith(f"{part}/")]
    if part is not None and not listed:
        raise BrainattError(f"{kit_dir / KIT_MANIFEST}: it lists no file of the kit part {part!r}: {RERUN_KIT}")
    for rel in listed:
        f = kit_dir / rel
        if not f.is_file():
            raise BrainattError(f"{f}: kit file missing: {RERUN_KIT}")
        if _cached_hash(f) != manifest["files"][rel]:
            raise BrainattError(
                f"{f}: kit file changed since training (its sha256 no longer matches {KIT_MANIFEST}): {RERUN_KIT}"
            )
    return manifest


def resolve_kit(name: str, kit_dir: str | Path | None = None) -> str:
    """``kit:clip`` → the kit's ``clip`` directory (``kit_dir`` or ``$BRAINATT_KIT`` or the shipped kit), after
    checking its files against the kit manifest (once per process per file)."""
    if not name.startswith(KIT_PREFIX):
        return name
    root = Path(kit_dir or os.environ.get("BRAINATT_KIT") or SHIPPED_KIT)
    part = name[len(KIT_PREFIX) :]
    path = root / part
    if not path.is_dir():
        raise BrainattError(f"{path}: kit part {name!r} not found: {RERUN_KIT}")
    verify_kit(root, part)
    return str(path)
