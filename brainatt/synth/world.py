"""The nsd-synth world: its specification, NSD-style experimental design, stimuli and ground-truth brains."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch
from tqdm import tqdm

from brainatt.images import images_to_tensor
from brainatt.io import BrainattError, config_hash, file_hash
from brainatt.nsd.layout import mask_voxel_ijk
from brainatt.synth.brain import SynthBrain, VisualSystem, VoxelParams, VoxelReadout, sample_voxel_params
from brainatt.synth.detector import DETECTOR_PATH, STRIDE
from brainatt.synth.scenes import Scene, caption, render_many, sample_scene

if TYPE_CHECKING:
    from brainatt.synth.anatomy import Anatomy

log = logging.getLogger(__name__)

# Bump world_version.json when anything that changes the generated world changes (brain, anatomy, design, noise).
WORLD_VERSION_FILE = Path(__file__).with_name("world_version.json")
GENERATOR_VERSION = str(json.loads(WORLD_VERSION_FILE.read_text())["version"])


@dataclass(frozen=True)
class WorldSpec:
    """Sizes and settings of an nsd-synth world (the ``synth`` section of the config)."""

    seed: int = 0
    n_subjects: int = 4
    n_train: int = 1200  # subject-specific images per subject
    n_shared: int = 240  # images every subject sees (the test set)
    image_size: int = 64
    trials_per_session: int = 360
    sessions_kept: tuple[float, ...] = (1.0, 1.0, 0.85, 0.75)  # fraction of sessions each subject completed
    voxel_mm: float = 4.0
    subject_scale: tuple[float, ...] = (1.0, 0.92, 1.08, 0.96)  # ROI and cortex size per subject
    ncsnr_median: float = 0.4
    ncsnr_spread: float = 0.5  # standard deviation of log ncsnr
    space: str = "func1pt8mm"
    betas_format: str = "hdf5"  # hdf5 | nifti

    @classmethod
    def from_config(cls, cfg: dict) -> WorldSpec:
        unknown = set(cfg) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise BrainattError(
                f"unknown synth settings {sorted(unknown)}: remove them from the config's synth section"
            )
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
        spec = cls(**cfg)
        spec.validate()
        return spec

    def validate(self) -> None:
        n_trials = 3 * (self.n_train + self.n_shared)
        if n_trials % self.trials_per_session:
            raise BrainattError(
                f"synth: 3·(n_train + n_shared) = {n_trials} trials do not fill sessions of "
                f"{self.trials_per_session}: choose trials_per_session dividing {n_trials}"
            )
        if self.image_size % STRIDE:
            raise BrainattError(f"synth: image_size must be a multiple of {STRIDE}")
        if self.betas_format not in ("hdf5", "nifti"):
            raise BrainattError("synth: betas_format must be 'hdf5' or 'nifti'")

    @property
    def subjects(self) -> list[str]:
        return [f"subj{i + 1:02d}" for i in range(self.n_subjects)]

    @property
    def n_images(self) -> int:
        return self.n_shared + self.n_subjects * self.n_train

    @property
    def n_sessions(self) -> int:
        return 3 * (self.n_train + self.n_shared) // self.trials_per_session

    def sessions_of(self, s: int) -> int:
        frac = self.sessions_kept[s % len(self.sessions_kept)]
        return max(1, round(frac * self.n_sessions))

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def world_fingerprint(spec: WorldSpec) -> str:
    """Identifies the world: generator version, the shipped detector and the spec. The kit manifest records it."""
    return config_hash({"generator": GENERATOR_VERSION, "detector": file_hash(DETECTOR_PATH), "spec": spec.as_dict()})


@dataclass
class Design:
    """NSD's design, 0-based: ``subjectim[s, i]`` nsd id of subject s's image i; ``masterordering[t]`` image i."""

    masterordering: np.ndarray  # (n_trials_max,)
    subjectim: np.ndarray  # (S, n_img)
    sharedix: np.ndarray  # (n_shared,)


def make_design(spec: WorldSpec, rng: np.random.Generator) -> Design:
    ids = rng.permutation(spec.n_images)
    shared = ids[: spec.n_shared]
    rows = [
        np.concatenate([shared, ids[spec.n_shared + s * spec.n_train : spec.n_shared + (s + 1) * spec.n_train]])
        for s in range(spec.n_subjects)
    ]
    n_img = spec.n_shared + spec.n_train
    masterordering = rng.permutation(np.repeat(np.arange(n_img), 3))
    return Design(masterordering=masterordering, subjectim=np.stack(rows), sharedix=shared)


@dataclass
class Subject:
    name: str
    anatomy: Anatomy
    params: VoxelParams
    readout: VoxelReadout
    ncsnr: np.ndarray  # (V,) true ncsnr of nsdgeneral voxels
    ijk: np.ndarray  # (V,3) nsdgeneral voxels in the project's voxel order
    kind: np.ndarray  # (V,) ROI kind strings (the generating ROIs: truth)
    responses: np.ndarray  # (n_images, V) noise-free standardised responses, rows = nsd ids
    n_trials: int
    atlases: dict[str, np.ndarray]  # the written atlases, estimated (brainatt.synth.atlases)
    atlas_agreement: dict[str, float]  # how they differ from ``kind`` at the nsdgeneral voxels


@dataclass
class World:
    spec: WorldSpec
    scenes: list[Scene]  # indexed by nsd id
    images: np.ndarray  # (n_images, H, W, 3) uint8, rows = nsd ids
    captions: list[str]
    design: Design
    subjects: list[Subject] = field(default_factory=list)


@torch.no_grad()
def visual_features(visual: VisualSystem, images: np.ndarray, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    out = [visual(images_to_tensor(images[i : i + batch])) for i in range(0, len(images), batch)]
    return torch.cat([e for e, _ in out]), torch.cat([c for _, c in out])


def world_scenes(spec: WorldSpec) -> tuple[list[Scene], np.random.Generator]:
    """The world's scene descriptions (indexed by nsd id) and the generator, positioned to draw the rest."""
    rng = np.random.default_rng(spec.seed)
    return [sample_scene(rng) for _ in range(spec.n_images)], rng


def build_world(spec: WorldSpec) -> World:
    """Draw everything about the world that does not involve measurement noise."""
    from brainatt.synth.anatomy import make_anatomy  # imports nilearn's datasets (~3.5 s); only building needs it
    from brainatt.synth.atlases import agreement, observed_atlases

    torch.manual_seed(spec.seed)
    scenes, rng = world_scenes(spec)
    grid = spec.image_size // STRIDE
    log.info("rendering %d scenes at %d px", len(scenes), spec.image_size)
    images, _ = render_many(scenes, spec.image_size, grid)
    design = make_design(spec, rng)
    world = World(spec=spec, scenes=scenes, images=images, captions=[caption(s) for s in scenes], design=design)
    visual = VisualSystem()
    energy, cats = visual_features(visual, images)
    for s, name in enumerate(tqdm(spec.subjects, desc="subjects")):
        sub_rng = np.random.default_rng([spec.seed, s])
        anatomy = make_anatomy(sub_rng, spec.voxel_mm, spec.subject_scale[s % len(spec.subject_scale)])
        ijk = mask_voxel_ijk(anatomy.nsdgeneral)
        kind = anatomy.kind[tuple(ijk.T)].astype(str)
        family = np.array([0 if k == "" else (1 if k[0] in "Vh" else 2) for k in kind])
        params = sample_voxel_params(family, list(kind), anatomy.mni(ijk), sub_rng)
        readout = VoxelReadout(params, grid)
        readout.calibrate(energy, cats)
        with torch.no_grad():
            responses = readout(energy, cats).numpy()
        family_snr = np.select([family == 1, family == 2], [1.3, 1.0], 0.55)
        subject_snr = sub_rng.uniform(0.85, 1.15)
        ncsnr = family_snr * np.exp(sub_rng.normal(0, spec.ncsnr_spread, len(kind)))
        ncsnr *= spec.ncsnr_median * subject_snr / np.median(ncsnr)  # the spec's median, up to subject variation
        ncsnr = np.clip(ncsnr, 0.08, 2.5)
        atlases = observed_atlases(anatomy, ijk, kind, params, ncsnr, responses, scenes, sub_rng)
        stats = agreement(atlases, ijk, kind)
        log.info("%s atlases vs generating ROIs: %s", name, stats)
        world.subjects.append(
            Subject(
                name=name,
                anatomy=anatomy,
                params=params,
                readout=readout,
                ncsnr=ncsnr,
                ijk=ijk,
                kind=kind,
                responses=responses,
                n_trials=spec.sessions_of(s) * spec.trials_per_session,
                atlases=atlases,
                atlas_agreement=stats,
            )
        )
    return world


def simulate_session(world: World, s: int, session: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Betas of one session in % signal change: ``(trials, X, Y, Z) float32`` and the trials' nsd ids.

    beta = session offset + voxel gain × session scale × (signal + noise / ncsnr); brain voxels outside
    nsdgeneral carry noise only, voxels outside the brain are 0 (as in NSD).
    """
    spec, sub = world.spec, world.subjects[s]
    t0 = (session - 1) * spec.trials_per_session
    trial_img = world.design.masterordering[t0 : t0 + spec.trials_per_session]
    nsd_ids = world.design.subjectim[s, trial_img]
    brain_ijk = np.argwhere(sub.anatomy.brainmask)
    n_brain = len(brain_ijk)
    gain = np.random.default_rng([spec.seed, s, 0]).uniform(0.5, 1.5, n_brain)  # fixed per voxel
    offset = rng.normal(0, 0.5, n_brain)
    scale = rng.uniform(0.7, 1.3)
    noise = rng.standard_normal((len(trial_img), n_brain))
    signal = np.zeros_like(noise)
    where = sub.anatomy.nsdgeneral[tuple(brain_ijk.T)]
    # nsdgeneral voxels, in brain order; map from the project's voxel order via a lookup volume.
    order = np.full(sub.anatomy.shape, -1)
    order[tuple(sub.ijk.T)] = np.arange(len(sub.ijk))
    v = order[tuple(brain_ijk[where].T)]
    signal[:, where] = sub.responses[nsd_ids][:, v]
    noise[:, where] /= sub.ncsnr[v]
    beta = offset + gain * scale * (signal + noise)
    vol = np.zeros((len(trial_img), *sub.anatomy.shape), dtype=np.float32)
    vol[:, brain_ijk[:, 0], brain_ijk[:, 1], brain_ijk[:, 2]] = beta
    return vol, nsd_ids


def load_brain(ground_truth: Path, subject: str) -> SynthBrain:
    """Rebuild a subject's ground-truth brain from ``ground_truth/{subject}.h5``."""
    path = Path(ground_truth) / f"{subject}.h5"
    with h5py.File(path, "r") as f:
        params = VoxelParams(**{k: f["params"][k][()] for k in f["params"]})
        readout = VoxelReadout(params, int(f.attrs["grid"]))
        readout.mean.copy_(torch.from_numpy(f["readout/mean"][()]))
        readout.std.copy_(torch.from_numpy(f["readout/std"][()]))
    return SynthBrain(VisualSystem(), readout).eval()
