"""The kit: small models trained on nsd-synth scenes so the embedded default runs without downloads.

``brainatt kit --out DIR`` trains, in order, a byte-level BPE tokenizer on captions (``tokenizers``), a CLIP-style
model (open_clip custom config; its image tower is the demo backbone), a ClipCap-style prefix captioner
(MLP + small GPT-2) and a text-conditioned pixel-space diffusion model (diffusers UNet + DDIM scheduler,
conditioned on the kit CLIP's text tower; see `brainatt.models.diffusion`), each saved in its library's own
format so it loads through the same loaders as real pretrained models (``--parts`` retrains only some parts).
Training data are fresh scenes from the nsd-synth generator (unlimited, same distribution as the stimuli).
``manifest.json`` records the generator's version and fingerprint, training configs and file hashes; a kit whose
fingerprint no longer matches the configured world is stale and the DAG retrains it.

Training checkpoints every ``checkpoint_every`` steps under ``DIR/checkpoints/`` and resumes from there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from brainatt import __version__
from brainatt.images import images_to_tensor
from brainatt.io import BrainattError, atomic_path, file_hash, write_json
from brainatt.models.spec import KIT_MANIFEST, SHIPPED_KIT, ModelSpec, read_kit_manifest, verify_kit
from brainatt.synth.scenes import GENERATOR_VERSION, caption, generator_fingerprint, render_many, sample_scene

log = logging.getLogger(__name__)
MANIFEST = KIT_MANIFEST
SPECIAL = {"pad_token": "<|pad|>", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}


@dataclass(frozen=True)
class ClipConfig:
    embed_dim: int = 128
    vision_width: int = 128
    vision_layers: int = 6
    patch_size: int = 8
    text_width: int = 128
    text_layers: int = 3
    context_length: int = 32
    steps: int = 1500
    batch: int = 128
    lr: float = 1e-3


@dataclass(frozen=True)
class CaptionerConfig:
    width: int = 128
    layers: int = 2
    prefix_len: int = 4
    steps: int = 1200
    batch: int = 64
    lr: float = 1e-3


@dataclass(frozen=True)
class DiffusionConfig:
    """Pixel-space denoiser: 64-px images folded ``space_to_depth``× into channels, conditioned on kit-CLIP text."""

    channels: tuple[int, ...] = (64, 96, 96)
    layers_per_block: int = 1
    space_to_depth: int = 4
    steps: int = 9000
    batch: int = 32
    lr: float = 2e-3
    cond_drop: float = 0.1  # classifier-free guidance: conditioning dropped to zeros this often
    sample_steps: int = 50  # DDIM steps used by kit-eval (15 leave visible noise; chosen on a validation world)
    guidance_scale: float = 3.0
    eval_per_category: int = 8  # images generated per category by kit-eval


@dataclass(frozen=True)
class KitConfig:
    image_size: int = 64
    seed: int = 0
    n_images: int = 16000
    vocab_size: int = 600
    checkpoint_every: int = 50
    eval_images: int = 600  # held-out scenes scored by kit-eval
    clip: ClipConfig = field(default_factory=ClipConfig)
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    @classmethod
    def from_config(cls, cfg: dict) -> KitConfig:
        cfg = dict(cfg)
        parts = {"clip": ClipConfig, "captioner": CaptionerConfig, "diffusion": DiffusionConfig}
        for key, kind in parts.items():
            if key in cfg:
                part = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg[key].items()}
                cfg[key] = kind(**part)
        return cls(**cfg)


def kit_fingerprint(image_size: int) -> str:
    """What a kit must match: the scene generator's version at the configured image size."""
    return generator_fingerprint(image_size)


def kit_is_current(kit_dir: str | Path, image_size: int) -> bool:
    if not (Path(kit_dir) / MANIFEST).exists():
        return False
    return read_kit_manifest(kit_dir).get("generator_fingerprint") == kit_fingerprint(image_size)


def kit_in_use(image_size: int, retrained: str | Path = "results/kit") -> Path:
    """The kit the workflow runs with: the shipped one when it matches the scene generator at ``image_size``, else
    the one the workflow trains into ``retrained`` (a kit trained on another world is stale)."""
    return SHIPPED_KIT if kit_is_current(SHIPPED_KIT, image_size) else Path(retrained)


# -------------------------------------------------------------------------------------------------- training
def _schedule(step: int, total: int, warmup: int = 100) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _train(
    name: str,
    model: torch.nn.Module,
    loss_fn: Callable[[np.ndarray, np.random.Generator], torch.Tensor],
    n_items: int,
    steps: int,
    batch: int,
    lr: float,
    ckpt_dir: Path,
    every: int,
    seed: int,
) -> None:
    """AdamW + warmup/cosine loop over random minibatches, checkpointing and resuming by step."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.05)
    ckpt = ckpt_dir / f"{name}.pt"
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
        log.info("%s: resuming at step %d from %s", name, start, ckpt)
    model.train()
    with tqdm(total=steps, initial=start, desc=f"kit {name}") as bar:
        for step in range(start, steps):
            rng = np.random.default_rng([seed, step])  # batch and dropout depend only on the step: resume is exact
            torch.manual_seed(int(np.random.default_rng([seed, step, 1]).integers(2**62)))
            for g in opt.param_groups:
                g["lr"] = lr * _schedule(step, steps)
            loss = loss_fn(rng.choice(n_items, size=batch, replace=False), rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if (step + 1) % every == 0 or step + 1 == steps:
                ckpt_dir.mkdir(parents=True, exist_ok=True)
                with atomic_path(ckpt) as tmp:
                    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1}, tmp)
    model.eval()


def kit_scenes(n: int, seed: int, image_size: int) -> tuple[np.ndarray, list[str], list]:
    """``n`` fresh nsd-synth scenes: images, captions and descriptions."""
    rng = np.random.default_rng([seed, 7])
    scenes = [sample_scene(rng) for _ in range(n)]
    images, _ = render_many(scenes, image_size, max(1, image_size // 4))
    return images, [caption(s) for s in scenes], scenes


def train_tokenizer(captions: list[str], vocab_size: int, out: Path):
    """Byte-level BPE on the captions, wrapped as a transformers fast tokenizer (used by CLIP and GPT-2)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        captions, vocab_size=vocab_size, min_frequency=2, special_tokens=[SPECIAL["pad_token"], SPECIAL["eos_token"]]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, **SPECIAL)
    tok.save_pretrained(out)
    return tok


def clip_model_config(cfg: KitConfig, vocab_size: int) -> dict:
    c = cfg.clip
    return {
        "model_cfg": {
            "embed_dim": c.embed_dim,
            "vision_cfg": {
                "image_size": cfg.image_size,
                "patch_size": c.patch_size,
                "width": c.vision_width,
                "layers": c.vision_layers,
                "head_width": 32,
                "mlp_ratio": 4.0,
            },
            "text_cfg": {
                "context_length": c.context_length,
                "vocab_size": vocab_size,
                "width": c.text_width,
                "heads": c.text_width // 32,
                "layers": c.text_layers,
                "hf_tokenizer_name": "brainatt-kit",
                "pool_type": "last",
                "no_causal_mask": True,
            },
        },
        "preprocess_cfg": {
            "size": cfg.image_size,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }


def train_clip(cfg: KitConfig, images: np.ndarray, captions: list[str], tokenizer, out: Path) -> None:
    import open_clip

    config = clip_model_config(cfg, len(tokenizer))
    torch.manual_seed(cfg.seed)
    model = open_clip.model.CLIP(**config["model_cfg"], output_dict=True)
    mean = torch.tensor(config["preprocess_cfg"]["mean"])[:, None, None]
    std = torch.tensor(config["preprocess_cfg"]["std"])[:, None, None]
    ids = tokenizer(
        captions, padding="max_length", max_length=cfg.clip.context_length, truncation=True, return_tensors="pt"
    ).input_ids
    clip_loss = open_clip.loss.ClipLoss()

    def loss_fn(idx: np.ndarray, _rng: np.random.Generator) -> torch.Tensor:
        x = (images_to_tensor(images[idx]) - mean) / std
        o = model(x, ids[idx])
        return clip_loss(o["image_features"], o["text_features"], o["logit_scale"])

    c = cfg.clip
    _train(
        "clip",
        model,
        loss_fn,
        len(images),
        c.steps,
        c.batch,
        c.lr,
        out.parent / "checkpoints",
        cfg.checkpoint_every,
        cfg.seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    save_file(
        {k: v.detach().half().contiguous() for k, v in model.state_dict().items()},
        str(out / "open_clip_model.safetensors"),
    )
    tokenizer.save_pretrained(out)


@torch.no_grad()
def embed_images(
    clip: ModelSpec | str | Path, batches: Iterable[np.ndarray], kit_dir: str | Path | None = None
) -> torch.Tensor:
    """Raw CLIP image embeddings ``(N, D)`` of ``(B, H, W, 3) uint8`` image batches (a captioner's prefixes)."""
    from brainatt.models.loading import load_clip

    spec = clip if isinstance(clip, ModelSpec) else ModelSpec(role="clip", name=str(clip))
    model = load_clip(spec, kit_dir=kit_dir)
    return torch.cat([model.encode_image(images_to_tensor(b)).float() for b in batches])


def train_captioner(
    cfg: KitConfig, embeddings: torch.Tensor, captions: list[str], tokenizer, out: Path, lm=None
) -> None:
    """The prefix captioner (mapping MLP + GPT-2) on (raw CLIP embedding, caption) pairs, saved to ``out``.

    ``lm``: a pretrained GPT-2 (with ``tokenizer``, its own) to fine-tune; None: a small GPT-2 of
    ``cfg.captioner`` trained from scratch (the kit). Checkpoints go to ``out``'s sibling ``checkpoints/``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from brainatt.models.captioner import PrefixCaptioner

    c = cfg.captioner
    torch.manual_seed(cfg.seed)
    if lm is None:
        lm = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(tokenizer),
                n_positions=64,
                n_embd=c.width,
                n_layer=c.layers,
                n_head=c.width // 32,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    model = PrefixCaptioner(lm, tokenizer, clip_dim=embeddings.shape[1], prefix_len=c.prefix_len)
    _train(
        "captioner",
        model,
        lambda idx, _rng: model(embeddings[idx], [captions[i] for i in idx]),
        len(embeddings),
        c.steps,
        c.batch,
        c.lr,
        out.parent / "checkpoints",
        cfg.checkpoint_every,
        cfg.seed,
    )
    with atomic_path(out, directory=True) as tmp:
        model.save_pretrained(tmp)


def train_diffusion(cfg: KitConfig, images: np.ndarray, captions: list[str], clip_dir: Path, out: Path) -> None:
    """The denoiser on the (image, caption) pairs, conditioned on the frozen kit CLIP's pooled text embeddings."""
    from diffusers import DDIMScheduler

    from brainatt.models.diffusion import build_unet, denoising_loss, make_train_scheduler
    from brainatt.models.loading import load_clip

    d = cfg.diffusion
    p = d.space_to_depth
    if cfg.image_size % (p * 2 ** (len(d.channels) - 1)):
        raise BrainattError(
            f"kit.diffusion: image_size {cfg.image_size} must be divisible by space_to_depth × 2^(levels-1): "
            "change kit.diffusion.space_to_depth or channels"
        )
    if d.channels[0] < 3 * p * p:  # fewer features than output channels cannot represent the noise
        raise BrainattError(
            f"kit.diffusion: channels[0] = {d.channels[0]} < 3·space_to_depth² = {3 * p * p}: widen the first level"
        )
    clip = load_clip(ModelSpec(role="clip", name=str(clip_dir)))
    with torch.no_grad():
        texts = [captions[i : i + 512] for i in range(0, len(captions), 512)]
        cond = torch.cat([clip.encode_text(t, normalize=True) for t in texts])
    torch.manual_seed(cfg.seed)
    unet = build_unet(d.channels, d.layers_per_block, 3 * p * p, cfg.image_size // p, cond.shape[1])
    scheduler = make_train_scheduler()

    def loss_fn(idx: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        x0 = torch.nn.functional.pixel_unshuffle(images_to_tensor(images[idx]) * 2 - 1, p)
        return denoising_loss(unet, scheduler, x0, cond[idx], generator, d.cond_drop)

    ckpt = out.parent / "checkpoints"
    _train("diffusion", unet, loss_fn, len(images), d.steps, d.batch, d.lr, ckpt, cfg.checkpoint_every, cfg.seed)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    DDIMScheduler.from_config(scheduler.config).save_pretrained(out / "scheduler")
    info = {"conditioning": "clip", "embedding": "pooled", "space_to_depth": p, "image_size": cfg.image_size}
    (out / "brainatt.json").write_text(json.dumps(info, indent=1))


PARTS = ("clip", "captioner", "diffusion")  # the tokenizer is trained with the CLIP


def _kept_config(cfg: KitConfig, out: Path, parts: tuple[str, ...]) -> dict:
    """The manifest config when only ``parts`` are retrained: the other parts keep their recorded settings."""
    manifest = check_manifest(out)
    path = out / MANIFEST
    if manifest["generator_fingerprint"] != kit_fingerprint(cfg.image_size):
        raise BrainattError(f"{path}: the kit was trained on another world: retrain all parts (no --parts)")
    config = dataclasses.asdict(cfg)
    for key in ("image_size", "seed", "n_images", "vocab_size"):
        if manifest["config"][key] != config[key]:
            raise BrainattError(
                f"{path}: kit.{key} = {config[key]} but the kit's other parts used {manifest['config'][key]}: "
                "use the kit's value or retrain all parts"
            )
    return {**config, **{part: manifest["config"][part] for part in PARTS if part not in parts}}


def train_kit(cfg: KitConfig, out: str | Path, parts: tuple[str, ...] = PARTS) -> Path:
    """Train kit parts into ``out`` (resuming from ``out/checkpoints``) and write the manifest last.

    Retraining only some ``parts`` keeps the others (e.g. the diffusion model on the shipped CLIP text tower).
    """
    out = Path(out)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise BrainattError(f"unknown kit parts {unknown}: choose from {list(PARTS)}")
    config = dataclasses.asdict(cfg) if set(parts) == set(PARTS) else _kept_config(cfg, out, parts)
    out.mkdir(parents=True, exist_ok=True)
    log.info("rendering %d training scenes", cfg.n_images)
    images, captions, _ = kit_scenes(cfg.n_images, cfg.seed, cfg.image_size)
    if "clip" in parts:
        tokenizer = train_tokenizer(captions, cfg.vocab_size, out / "tokenizer")
        train_clip(cfg, images, captions, tokenizer, out / "clip")
    if "captioner" in parts:
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(out / "tokenizer")
        embeddings = embed_images(out / "clip", (images[i : i + 512] for i in range(0, len(images), 512)))
        train_captioner(cfg, embeddings, captions, tokenizer, out / "captioner")
    if "diffusion" in parts:
        train_diffusion(cfg, images, captions, out / "clip", out / "diffusion")
    files = {
        str(p.relative_to(out)): file_hash(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and "checkpoints" not in p.parts and p.name != MANIFEST
    }
    write_json(
        out / MANIFEST,
        {
            "brainatt_version": __version__,
            "generator_version": GENERATOR_VERSION,
            "generator_fingerprint": kit_fingerprint(cfg.image_size),
            "config": config,
            "files": files,
        },
    )
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return out


def check_manifest(kit_dir: str | Path) -> dict:
    """The manifest, after checking every listed file's hash (a damaged kit is an error, not a silent retrain)."""
    return verify_kit(kit_dir)
