"""One loader per model role, for pretrained hub models and local directories alike.

Each model is a `ModelSpec` with a role: the config names ``models.backbone`` and ``models.clip`` (the roles its
rules read); the kit's diffusion model and captioner load through the same loaders. ``kit:<part>`` names a part
of the shipped kit (or of a retrained one, see `brainatt.models.kit`). Loading always goes through the
libraries' own loaders (``open_clip.create_model_and_transforms``, diffusers/transformers ``from_pretrained``);
weights come from safetensors or ``torch.load(weights_only=True)`` inside those loaders, and no remote code is run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import torch

from brainatt.io import BrainattError
from brainatt.models.spec import NO_WEIGHTS, ModelSpec, block_indices, closest, resolve_kit

log = logging.getLogger(__name__)

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


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@functools.cache
def hub_offline(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub is out of reach, decided once per process.

    ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) says so; otherwise one TCP connection to the hub's host is
    tried for ``timeout`` seconds (name lookup included). When offline, the hub libraries are switched to offline
    mode, so a model missing from the local cache fails at once instead of retrying per file.
    """
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        offline = True
    else:
        url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
        reached: list[bool] = []

        def probe() -> None:
            try:
                socket.create_connection((host, port), timeout=timeout).close()
                reached.append(True)
            except OSError:
                pass

        thread = threading.Thread(target=probe, daemon=True)  # the name lookup itself has no timeout
        thread.start()
        thread.join(timeout)
        offline = not reached
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        constants = sys.modules.get("huggingface_hub.constants")
        if constants is not None:  # already imported: it read the environment at import time
            constants.HF_HUB_OFFLINE = True
        log.info("the Hugging Face hub is out of reach: models load from the local cache only")
    return offline


def hub_guard(spec: ModelSpec, name: str, load: Callable[[], T]) -> T:
    """Run ``load``; a model that cannot be loaded becomes one clear line: a damaged local folder, a hub model
    missing from the cache while offline, or a name the hub does not know (a typo)."""
    local = _is_local(name) or name.startswith("local-dir:")
    offline = not local and hub_offline()
    try:
        return load()
    except (OSError, ValueError, RuntimeError) as e:
        if local:
            raise BrainattError(
                f"{name}: cannot load the {spec.role} model ({type(e).__name__}: {e}): "
                "check the directory holds the library's files"
            ) from None
        what = f"{name}" + (f" / {spec.pretrained}" if spec.pretrained else "")
        if offline:
            raise BrainattError(
                f"{spec.role} model {what} is not in the local cache and the hub cannot be reached (offline): "
                f"download it where there is network (it lands in the Hugging Face cache), or save it to a "
                f"directory and set models.{spec.role}.name to that path"
            ) from None
        raise BrainattError(
            f"{spec.role} model {what} could not be loaded from the hub, which is reachable "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}): check models.{spec.role}.name for a typo"
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


def _open_clip_pretrained(spec: ModelSpec, name: str) -> str | None:
    """The ``pretrained`` argument for open_clip, after checking ``name`` and the tag without the network.

    A model name open_clip does not know is a typo (told apart from being offline); a built-in architecture needs
    a pretrained tag or checkpoint file, or ``pretrained: none`` to mean random weights (else open_clip would give
    random weights with a log warning only).
    """
    import open_clip

    if name.startswith(("local-dir:", "hf-hub:")):
        return None if spec.pretrained == NO_WEIGHTS else spec.pretrained
    where = f"models.{spec.role}"
    known = open_clip.list_models()
    if name not in known:
        raise BrainattError(
            f"{where}.name: {name!r} is neither an open_clip model{closest(name, known)} nor an existing folder: "
            "fix the name (open_clip.list_models() lists them), or give a folder, hf-hub:ORG/NAME or kit:clip"
        )
    tags = open_clip.list_pretrained_tags_by_model(name)
    if spec.pretrained is None:
        raise BrainattError(
            f"{where}.pretrained: missing for {name}, which would get random weights: name a tag "
            f"({', '.join(tags) or 'none published'}) or a checkpoint file, or write `pretrained: {NO_WEIGHTS}` "
            "for random weights"
        )
    if spec.pretrained == NO_WEIGHTS:
        log.warning("%s: %s with random weights, as models.%s.pretrained: none asks", spec.role, name, spec.role)
        return None
    if spec.pretrained not in tags and not Path(spec.pretrained).is_file():
        raise BrainattError(
            f"{where}.pretrained: {spec.pretrained!r} is neither a pretrained tag of {name}"
            f"{closest(spec.pretrained, tags)} nor an existing checkpoint file: choose from {', '.join(tags)}"
        )
    return spec.pretrained


def load_clip(spec: ModelSpec, device: str = "cpu", kit_dir: str | Path | None = None) -> ClipModel:
    """An open_clip model by name + pretrained tag, checkpoint file, or local directory (``open_clip_config.json``)."""
    import open_clip

    name = _open_clip_name(spec, kit_dir)
    pretrained = _open_clip_pretrained(spec, name)

    def load() -> ClipModel:
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg["size"] if isinstance(cfg["size"], tuple | list) else (cfg["size"], cfg["size"])
        return ClipModel(
            model=model.eval(),
            tokenizer=open_clip.get_tokenizer(name),
            image_size=tuple(size),
            mean=torch.tensor(cfg["mean"]),
            std=torch.tensor(cfg["std"]),
        )

    if pretrained is None and not name.startswith(("local-dir:", "hf-hub:")):
        return load()  # random weights, asked for: nothing to fetch
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
        idx = block_indices(spec, len(visual.transformer.resblocks))

        def tokens(x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
            out = visual.forward_intermediates(x, indices=idx, normalize_intermediates=True, output_fmt="NCHW")
            return [m.permute(0, 2, 3, 1) for m in out["image_intermediates"]], out["image_features"]

        patch = visual.patch_size[0] if isinstance(visual.patch_size, tuple) else visual.patch_size
        return Backbone(tokens, visual, spec.layers, clip.image_size, clip.mean, clip.std, patch).to(device)
    if spec.source == "dinov2":
        name = resolve_kit(spec.name, kit_dir)
        model = hub_guard(spec, name, lambda: _load_dinov2(spec, name))
        cfg = model.config
        idx = block_indices(spec, cfg.num_hidden_layers)
        size = int(spec.extra.get("image_size", cfg.image_size))
        grid = size // cfg.patch_size
        first_patch = 1 + int(getattr(cfg, "num_register_tokens", 0))  # [CLS, registers…, patches…]

        def tokens(x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
            hidden = model(pixel_values=x, output_hidden_states=True).hidden_states  # embeddings + each block
            maps = [model.layernorm(hidden[i + 1])[:, first_patch:].unflatten(1, (grid, grid)) for i in idx]
            return maps, model.layernorm(hidden[-1])[:, 0]

        mean = torch.tensor(spec.extra.get("mean", (0.485, 0.456, 0.406)))
        std = torch.tensor(spec.extra.get("std", (0.229, 0.224, 0.225)))
        return Backbone(tokens, model, spec.layers, (size, size), mean, std, cfg.patch_size).to(device)
    raise BrainattError(f"models.{spec.role}.source {spec.source!r} is not a backbone source (open_clip, dinov2)")


def _load_dinov2(spec: ModelSpec, name: str) -> torch.nn.Module:
    """DINOv2, or DINOv2 with registers (by the checkpoint's ``model_type``), with every weight used and none missing.

    Loading a registers checkpoint into the plain class would drop its register tokens with a warning only.
    """
    from transformers import AutoConfig, Dinov2Model, Dinov2WithRegistersModel

    config = AutoConfig.from_pretrained(name)
    classes = {"dinov2": Dinov2Model, "dinov2_with_registers": Dinov2WithRegistersModel}
    if config.model_type not in classes:
        raise BrainattError(
            f"models.{spec.role}.name: {name} is a {config.model_type!r} model, not DINOv2: "
            "use source: dinov2 with a DINOv2 (with or without registers) checkpoint"
        )
    model, info = classes[config.model_type].from_pretrained(
        name, config=config, use_safetensors=True, output_loading_info=True
    )
    unused = [*info.get("missing_keys", []), *info.get("unexpected_keys", []), *info.get("mismatched_keys", [])]
    if unused:
        raise BrainattError(
            f"{name}: the {config.model_type} checkpoint does not match its architecture "
            f"({len(unused)} weights missing, unexpected or mis-shaped, e.g. {sorted(map(str, unused))[0]}): "
            "check the folder or hub id"
        )
    return model


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


def load_gpt2(name: str) -> tuple[Any, Any]:
    """A pretrained GPT-2 language model and its tokenizer (a local directory or a Hugging Face id), the start of
    a captioner's fine-tuning. A tokenizer without a padding token pads with its end-of-text token."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    spec = ModelSpec(role="captioner", name=name, source="captioner")

    def load() -> tuple[Any, Any]:
        lm = GPT2LMHeadModel.from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has no end-of-text token")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return lm, tokenizer

    return hub_guard(spec, name, load)
