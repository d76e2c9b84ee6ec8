"""One loader per model role, for pretrained hub models and local directories alike.

Each model is a `ModelSpec` with a role: the config names ``models.backbone`` and ``models.clip`` (the roles its
rules read); the kit's diffusion model and captioner load through the same loaders. ``kit:<part>`` names a part
of the shipped kit (or of a retrained one, see `brainatt.models.kit`). Loading always goes through the
libraries' own loaders (``open_clip.create_model_and_transforms``, diffusers/transformers ``from_pretrained``);
weights come from safetensors or ``torch.load(weights_only=True)`` inside those loaders, and no remote code is run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from brainatt.io import BrainattError
from brainatt.models.spec import ModelSpec, resolve_kit

T = TypeVar("T")


def default_device() -> str:
    """Where models run: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's parameters and buffers (names, shapes, dtypes and values), in key order."""
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too (logit_scale)
    return h.hexdigest()[:16]


def _is_local(name: str) -> bool:
    return Path(name).exists()


def hub_guard(spec: ModelSpec, name: str, load: Callable[[], T]) -> T:
    """Run ``load``; a hub model that cannot be fetched becomes one clear line saying how to provide it locally."""
    try:
        return load()
    except (OSError, ValueError, RuntimeError) as e:
        if _is_local(name) or name.startswith("local-dir:"):
            raise BrainattError(
                f"{name}: cannot load the {spec.role} model ({type(e).__name__}: {e}): "
                "check the directory holds the library's files"
            ) from None
        what = f"{name}" + (f" / {spec.pretrained}" if spec.pretrained else "")
        raise BrainattError(
            f"{spec.role} model {what} could not be loaded ({type(e).__name__}): it is not in the local cache and "
            f"the hub cannot be reached; download it where there is network (it lands in the Hugging Face cache), "
            f"or save it to a directory and set models.{spec.role}.name to that path"
        ) from None


# ------------------------------------------------------------------------------------------------------ CLIP
@dataclass
class ClipModel:
    """An open_clip image–text model with its tensor preprocessing and tokenizer."""

    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: tuple[int, int]
    mean: torch.Tensor
    std: torch.Tensor

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """``(B,3,H,W)`` float in [0,1] → model input (resized, normalised); differentiable."""
        return _resize_normalize(images, self.image_size, self.mean, self.std)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.model.encode_image(self.prepare(images), normalize=normalize)

    def encode_text(self, texts: list[str], normalize: bool = False) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenizer(texts).to(device), normalize=normalize)


def _resize_normalize(x: torch.Tensor, size: tuple[int, int], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    if tuple(x.shape[-2:]) != tuple(size):
        x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    return (x - mean.to(x)[:, None, None]) / std.to(x)[:, None, None]


def _open_clip_name(spec: ModelSpec, kit_dir: str | Path | None) -> str:
    name = resolve_kit(spec.name, kit_dir)
    if Path(name).is_dir():
        return f"local-dir:{name}"
    return name


def load_clip(spec: ModelSpec, device: str = "cpu", kit_dir: str | Path | None = None) -> ClipModel:
    """An open_clip model by name + pretrained tag, checkpoint file, or local directory (``open_clip_config.json``)."""
    import open_clip

    name = _open_clip_name(spec, kit_dir)

    def load() -> ClipModel:
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=spec.pretrained, device=device)
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg["size"] if isinstance(cfg["size"], tuple | list) else (cfg["size"], cfg["size"])
        return ClipModel(
            model=model.eval(),
            tokenizer=open_clip.get_tokenizer(name),
            image_size=tuple(size),
            mean=torch.tensor(cfg["mean"]),
            std=torch.tensor(cfg["std"]),
        )

    return hub_guard(spec, name.removeprefix("local-dir:"), load)


# -------------------------------------------------------------------------------------------------- backbone
class Backbone(torch.nn.Module):
    """A frozen vision model exposing patch tokens of chosen layers.

    ``forward(images)`` takes ``(B,3,H,W)`` floats in [0,1] and returns ``{layer: (B, gh, gw, C)}`` plus
    ``"pooled": (B, D)``; preprocessing (resize, normalisation) happens inside, so gradients reach the pixels.
    """

    def __init__(
        self,
        tokens_fn: Callable[[torch.Tensor], tuple[list[torch.Tensor], torch.Tensor]],
        modules: torch.nn.Module,
        layers: tuple[int, ...],
        image_size: tuple[int, int],
        mean: torch.Tensor,
        std: torch.Tensor,
        patch: int,
    ) -> None:
        super().__init__()
        self.inner = modules.eval().requires_grad_(False)
        self._tokens = tokens_fn
        self.layers = layers
        self.image_size = image_size
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.grid = (image_size[0] // patch, image_size[1] // patch)

    def forward(self, images: torch.Tensor) -> dict[str | int, torch.Tensor]:
        x = _resize_normalize(images, self.image_size, self.mean, self.std)
        maps, pooled = self._tokens(x)
        out: dict[str | int, torch.Tensor] = {layer: m for layer, m in zip(self.layers, maps, strict=True)}
        out["pooled"] = pooled
        return out


def load_backbone(spec: ModelSpec, device: str = "cpu", kit_dir: str | Path | None = None) -> Backbone:
    """open_clip visual towers (``source: open_clip``) or DINOv2 in transformers format (``source: dinov2``)."""
    if spec.source == "open_clip":
        clip = load_clip(spec, device, kit_dir)
        visual = clip.model.visual
        n_blocks = len(visual.transformer.resblocks)
        idx = [layer % n_blocks for layer in spec.layers]

        def tokens(x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
            out = visual.forward_intermediates(x, indices=idx, normalize_intermediates=True, output_fmt="NCHW")
            return [m.permute(0, 2, 3, 1) for m in out["image_intermediates"]], out["image_features"]

        patch = visual.patch_size[0] if isinstance(visual.patch_size, tuple) else visual.patch_size
        return Backbone(tokens, visual, spec.layers, clip.image_size, clip.mean, clip.std, patch).to(device)
    if spec.source == "dinov2":
        from transformers import Dinov2Model

        name = resolve_kit(spec.name, kit_dir)
        model = hub_guard(spec, name, lambda: Dinov2Model.from_pretrained(name, use_safetensors=True))
        cfg = model.config
        n_blocks = cfg.num_hidden_layers
        idx = [layer % n_blocks for layer in spec.layers]
        size = int(spec.extra.get("image_size", cfg.image_size))
        grid = size // cfg.patch_size

        def tokens(x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
            hidden = model(pixel_values=x, output_hidden_states=True).hidden_states  # embeddings + each block
            maps = [model.layernorm(hidden[i + 1])[:, 1:].unflatten(1, (grid, grid)) for i in idx]
            return maps, model.layernorm(hidden[-1])[:, 0]

        mean = torch.tensor(spec.extra.get("mean", (0.485, 0.456, 0.406)))
        std = torch.tensor(spec.extra.get("std", (0.229, 0.224, 0.225)))
        return Backbone(tokens, model, spec.layers, (size, size), mean, std, cfg.patch_size).to(device)
    raise BrainattError(f"models.{spec.role}.source {spec.source!r} is not a backbone source (open_clip, dinov2)")


# ------------------------------------------------------------------------------------------------- diffusion
@dataclass
class DiffusionModel:
    """diffusers components: the denoiser, its scheduler, an optional VAE, and how text conditions it.

    ``conditioning`` is ``"clip"`` when the UNet cross-attends to the CLIP role's text embedding (the kit), or
    ``"text_encoder"`` for Stable-Diffusion-style pipelines with their own transformers text encoder.
    """

    unet: torch.nn.Module
    scheduler: Any
    vae: torch.nn.Module | None = None
    text_encoder: torch.nn.Module | None = None
    tokenizer: Any = None
    conditioning: str = "text_encoder"
    info: dict[str, Any] = field(default_factory=dict)


def load_diffusion(spec: ModelSpec, device: str = "cpu", kit_dir: str | Path | None = None) -> DiffusionModel:
    """A diffusers model directory or hub id with ``unet/`` and ``scheduler/`` (+ ``vae/``, ``text_encoder/``)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    name = resolve_kit(spec.name, kit_dir)

    def load() -> DiffusionModel:
        unet = UNet2DConditionModel.from_pretrained(name, subfolder="unet", use_safetensors=True)
        scheduler = DDIMScheduler.from_pretrained(name, subfolder="scheduler")
        local = Path(name)
        info = json.loads((local / "brainatt.json").read_text()) if (local / "brainatt.json").exists() else {}
        model = DiffusionModel(
            unet=unet.to(device).eval().requires_grad_(False),
            scheduler=scheduler,
            info=info,
            conditioning=info.get("conditioning", "text_encoder"),
        )
        if not local.is_dir() or (local / "vae").is_dir():
            vae = AutoencoderKL.from_pretrained(name, subfolder="vae", use_safetensors=True)
            model.vae = vae.to(device).eval().requires_grad_(False)
        if model.conditioning == "text_encoder":
            from transformers import AutoTokenizer, CLIPTextModel

            model.text_encoder = CLIPTextModel.from_pretrained(name, subfolder="text_encoder", use_safetensors=True)
            model.text_encoder.to(device).eval().requires_grad_(False)
            model.tokenizer = AutoTokenizer.from_pretrained(name, subfolder="tokenizer")
        return model

    return hub_guard(spec, name, load)


# ------------------------------------------------------------------------------------------------- captioner
def load_captioner(spec: ModelSpec, device: str = "cpu", kit_dir: str | Path | None = None) -> Any:
    """A prefix captioner directory (``mapping.json`` + ``mapping.safetensors`` + ``lm/`` in transformers format)."""
    from brainatt.models.captioner import PrefixCaptioner

    name = resolve_kit(spec.name, kit_dir)
    return hub_guard(spec, name, lambda: PrefixCaptioner.from_pretrained(name).to(device).eval())
