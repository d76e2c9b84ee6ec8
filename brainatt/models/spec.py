"""Model specs: what the config's ``models.<role>`` sections name, and where ``kit:`` names resolve.

Kept free of torch and the model libraries, so file contracts and the workflow can read and record specs cheaply.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainatt.io import BrainattError

KIT_PREFIX = "kit:"
SHIPPED_KIT = Path(__file__).resolve().parents[1] / "kit"


@dataclass(frozen=True)
class ModelSpec:
    """A model role from the config.

    ``name`` is an open_clip model name (``ViT-B-16``), a Hugging Face id (``facebook/dinov2-base``), a local
    directory, or ``kit:<part>``; ``pretrained`` is the open_clip pretrained tag or a checkpoint file;
    ``layers`` (backbones) are the transformer blocks whose patch tokens are exposed (negative counts from the end).
    """

    role: str
    name: str
    source: str = "open_clip"  # open_clip | dinov2 | diffusers | captioner
    pretrained: str | None = None
    layers: tuple[int, ...] = (-1,)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, role: str, cfg: dict[str, Any]) -> ModelSpec:
        cfg = dict(cfg)
        if "layers" in cfg:
            cfg["layers"] = tuple(cfg["layers"])
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


def resolve_kit(name: str, kit_dir: str | Path | None = None) -> str:
    """``kit:clip`` → the kit's ``clip`` directory (``kit_dir`` or ``$BRAINATT_KIT`` or the shipped kit)."""
    if not name.startswith(KIT_PREFIX):
        return name
    root = Path(kit_dir or os.environ.get("BRAINATT_KIT") or SHIPPED_KIT)
    path = root / name[len(KIT_PREFIX) :]
    if not path.is_dir():
        raise BrainattError(f"{path}: kit part {name!r} not found: run `snakemake kit` to train the kit")
    return str(path)
