"""Candidate natural images for BrainSCUBA's projection: fresh nsd-synth scenes no subject saw and the kit never
trained on, written as an ``images.h5`` (through `brainatt.contracts.stimuli`) for the ``features --role clip``
command to embed.

Scenes come from their own random stream (``default_rng([seed, CANDIDATE_STREAM])``); the world draws its
scenes from ``default_rng(world_seed)`` and the kit from ``default_rng([kit_seed, KIT_STREAM])``
(`brainatt.models.kit.kit_scenes`). A scene is fixed by its description and its render seed, so any candidate
whose render seed also occurs among the world's or the kit's scenes is dropped, and the count is logged.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from brainatt.contracts.stimuli import stimuli_writer
from brainatt.synth.scenes import Scene, caption, render_many, sample_scene

log = logging.getLogger(__name__)

CANDIDATE_STREAM = 0x5C0BA
KIT_STREAM = 7  # the stream `brainatt.models.kit.kit_scenes` draws the kit's training scenes from


def scene_seeds(rng: np.random.Generator, n: int) -> set[int]:
    """Render seeds of the first ``n`` scenes drawn from ``rng``."""
    return {sample_scene(rng).seed for _ in range(n)}


def used_seeds(world_seed: int, world_images: int, kit_seed: int, kit_images: int) -> set[int]:
    """Render seeds of the world's stimuli and the kit's training scenes."""
    world = scene_seeds(np.random.default_rng(world_seed), world_images)
    kit = scene_seeds(np.random.default_rng([kit_seed, KIT_STREAM]), kit_images)
    return world | kit


def candidate_scenes(n: int, seed: int, exclude: set[int]) -> tuple[list[Scene], int]:
    """``n`` scenes from the candidate stream whose render seeds avoid ``exclude`` (and each other), and how many
    were dropped for a clash."""
    rng = np.random.default_rng([seed, CANDIDATE_STREAM])
    scenes: list[Scene] = []
    seen = set(exclude)
    dropped = 0
    while len(scenes) < n:
        s = sample_scene(rng)
        if s.seed in seen:
            dropped += 1
            continue
        seen.add(s.seed)
        scenes.append(s)
    return scenes, dropped


def write_candidates(
    out: str | Path,
    n: int,
    seed: int,
    image_size: int,
    world: tuple[int, int],
    kit: tuple[int, int],
    batch: int = 1000,
) -> Path:
    """Render ``n`` candidate scenes into ``out`` (images.h5, nsd ids 0…n−1, one caption each).

    ``world`` and ``kit`` are ``(seed, number of images)`` of the scenes the candidates must avoid.
    """
    t0 = time.time()
    scenes, dropped = candidate_scenes(n, seed, used_seeds(*world, *kit))
    log.info("%d candidate scenes (seed %d); %d dropped for sharing a render seed with stimuli/kit", n, seed, dropped)
    config: dict[str, Any] = {"n": n, "seed": seed, "image_size": image_size, "world": world, "kit": kit}
    with stimuli_writer(out, config, np.arange(n), (image_size, image_size, 3)) as w:
        for i in tqdm(range(0, n, batch), desc="candidate scenes", unit="batch", mininterval=5):
            images, _ = render_many(scenes[i : i + batch], image_size, max(1, image_size // 4))
            w.images[i : i + len(images)] = images
        w.captions([[caption(s)] for s in scenes])
    log.info("rendered %d candidates in %.1f s → %s", n, time.time() - t0, out)
    return Path(out)
