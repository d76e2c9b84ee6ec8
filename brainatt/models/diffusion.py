"""Text-conditioned diffusion: the kit denoiser's recipe, its training loss, and the one sampling loop.

Kept apart, diffusers style: `build_unet` (the model), `make_train_scheduler` (DDPM; saved as DDIM for
sampling), `denoising_loss` (one training step's loss) and `sample` (DDIM or DPM-Solver++, classifier-free guidance,
gradient guidance).

How text conditions the UNet (``brainatt.json`` in the model folder):

- ``conditioning: "clip"`` (the kit): the CLIP role's L2-normalised *pooled* text embedding, given to the UNet
  both as a one-token cross-attention context and as its class embedding (``class_embed_type="projection"``,
  added to the timestep embedding, so it modulates every ResNet block). The unconditional branch of
  classifier-free guidance is the zero vector (conditioning is dropped to zeros during training).
- ``conditioning: "text_encoder"`` (Stable Diffusion): the pipeline's own CLIP text encoder's token states; the
  unconditional branch is the empty prompt.

Model space: with a ``vae/`` the UNet works on its scaled latents; without one it works on pixels in [-1, 1],
optionally folded ``space_to_depth`` × ``space_to_depth`` into channels (the kit: 64×64×3 pixels are a
16×16×48 tensor, so a small UNet runs at 16×16 yet generates full-resolution 64-px images).

`sample` takes a ``guide``: the hook where brain-guided diffusion (BrainDiVE) adds a gradient term to each step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from brainatt.io import BrainattError
from brainatt.models.loading import ClipModel, DiffusionModel

# Per-image objective to *increase*, of the predicted clean images (B,3,H,W) in [0,1] at timestep t.
Guide = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NUM_TRAIN_TIMESTEPS = 1000


def build_unet(
    channels: Sequence[int], layers_per_block: int, in_channels: int, sample_size: int, cond_dim: int
) -> torch.nn.Module:
    """A small UNet2DConditionModel: ResNet blocks, cross-attention only at the coarsest level (CPU-cheap)."""
    from diffusers import UNet2DConditionModel

    n = len(channels)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=tuple(channels),
        down_block_types=("DownBlock2D",) * (n - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
        layers_per_block=layers_per_block,
        cross_attention_dim=cond_dim,
        attention_head_dim=32,
        norm_num_groups=min(16, channels[0]),
        class_embed_type="projection",
        projection_class_embeddings_input_dim=cond_dim,
        resnet_time_scale_shift="scale_shift",
    )


def make_train_scheduler() -> Any:
    """DDPM with the cosine noise schedule (better than linear at low resolution); ε-prediction."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="epsilon",
        clip_sample=True,
    )


def unet_conditioning(unet: torch.nn.Module, cond: torch.Tensor) -> dict[str, torch.Tensor]:
    """UNet keyword arguments for a conditioning tensor: (B,D) pooled embeddings or (B,L,D) token states."""
    if cond.ndim == 2:
        kwargs = {"encoder_hidden_states": cond[:, None]}
        if unet.config.class_embed_type == "projection":
            kwargs["class_labels"] = cond
        return kwargs
    return {"encoder_hidden_states": cond}


def denoising_loss(
    unet: torch.nn.Module,
    scheduler: Any,
    x0: torch.Tensor,
    cond: torch.Tensor,
    generator: torch.Generator,
    drop: float,
    min_snr: float = 5.0,
) -> torch.Tensor:
    """ε-prediction MSE at random timesteps, Min-SNR-γ weighted; conditioning dropped to zeros with prob ``drop``."""
    b = x0.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    keep = (torch.rand(b, generator=generator) >= drop).to(cond.dtype)
    cond = cond * keep.view(-1, *([1] * (cond.ndim - 1)))
    pred = unet(scheduler.add_noise(x0, noise, t), t, **unet_conditioning(unet, cond)).sample
    alpha = scheduler.alphas_cumprod[t]
    snr = alpha / (1 - alpha)
    weight = snr.clamp(max=min_snr) / snr  # Min-SNR-γ (Hang et al. 2023): faster convergence
    return (weight * (pred - noise).square().mean(dim=(1, 2, 3))).mean()


# ------------------------------------------------------------------------------------------- model space
def to_model_space(model: DiffusionModel, images: torch.Tensor) -> torch.Tensor:
    """Images (B,3,H,W) in [0,1] → what the UNet denoises (VAE latents, or pixels in [-1,1], folded)."""
    x = images * 2 - 1
    if model.vae is not None:
        return model.vae.encode(x).latent_dist.mean * model.vae.config.scaling_factor
    p = int(model.info.get("space_to_depth", 1))
    return F.pixel_unshuffle(x, p) if p > 1 else x


def from_model_space(model: DiffusionModel, z: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """The inverse of `to_model_space` (differentiable), resized to ``size`` px if given; values in [0,1]."""
    if model.vae is not None:
        x = model.vae.decode(z / model.vae.config.scaling_factor).sample
    else:
        p = int(model.info.get("space_to_depth", 1))
        x = F.pixel_shuffle(z, p) if p > 1 else z
    x = ((x + 1) / 2).clamp(0, 1)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return x


def model_shape(model: DiffusionModel) -> tuple[int, int, int]:
    cfg = model.unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    return cfg.in_channels, size, size


# --------------------------------------------------------------------------------------------------- prompts
def encode_prompts(
    model: DiffusionModel, prompts: list[str], clip: ClipModel | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditioning and unconditional tensors for ``prompts`` (see the module docstring)."""
    device = next(model.unet.parameters()).device
    if model.conditioning == "clip":
        if clip is None:
            raise BrainattError("this diffusion model is conditioned on the CLIP role: pass the models.clip model")
        cond = clip.encode_text(prompts, normalize=True).to(device)
        return cond, torch.zeros_like(cond)
    if model.text_encoder is None or model.tokenizer is None:
        raise BrainattError("diffusion model without a text encoder: its folder needs text_encoder/ and tokenizer/")

    def states(texts: list[str]) -> torch.Tensor:
        ids = model.tokenizer(
            texts, padding="max_length", max_length=model.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)  # fmt: skip
        return model.text_encoder(ids)[0]

    return states(prompts), states([""] * len(prompts))


# -------------------------------------------------------------------------------------------------- sampling
SCHEDULERS = ("ddim", "dpm++2m")
GUIDE_GRADIENTS = ("unet", "x0")


def make_sampler(model: DiffusionModel, name: str, steps: int) -> Any:
    """The model's noise schedule as a sampler: ``ddim`` or ``dpm++2m`` (DPM-Solver++, 2nd-order multistep).

    The sampler always receives ε (`sample` converts a v-prediction UNet's output), so it is built for ε.
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":
        scheduler = DDIMScheduler.from_config(model.scheduler.config, prediction_type="epsilon")
    elif name == "dpm++2m":
        scheduler = DPMSolverMultistepScheduler.from_config(
            model.scheduler.config, algorithm_type="dpmsolver++", solver_order=2, prediction_type="epsilon"
        )
    else:
        raise BrainattError(f"unknown scheduler {name!r}: choose from {', '.join(SCHEDULERS)}")
    scheduler.set_timesteps(steps)
    return scheduler


def unconditional(model: DiffusionModel, n: int) -> torch.Tensor:
    """The unconditional conditioning for ``n`` images: zero CLIP embeddings (the kit), the empty prompt's token
    states, or zero token states for a model conditioned on given ``embeddings``."""
    device = next(model.unet.parameters()).device
    cfg = model.unet.config
    if model.conditioning == "clip":
        dim = cfg.projection_class_embeddings_input_dim or cfg.cross_attention_dim
        return torch.zeros(n, dim, device=device)
    if model.conditioning == "embeddings":  # token states given directly (random-weight models): zero states
        return torch.zeros(n, int(model.info.get("context_length", 77)), cfg.cross_attention_dim, device=device)
    return encode_prompts(model, [""] * n)[1]


def initial_noise(model: DiffusionModel, seeds: Sequence[int]) -> torch.Tensor:
    """One noise tensor per seed, each from its own generator: an image depends on its seed, not on its batch."""
    shape = model_shape(model)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def sample(
    model: DiffusionModel,
    prompts: list[str] | None,
    clip: ClipModel | None = None,
    *,
    steps: int = 50,
    guidance_scale: float = 3.0,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    image_size: int | None = 64,
    guide: Guide | None = None,
    guide_scale: float = 0.0,
    eta: float = 0.0,
    scheduler: str = "ddim",
    reuse_eps: bool = True,
    guide_grad: str = "unet",
    guide_window: tuple[float, float] = (0.0, 1.0),
    embeddings: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDIM or DPM-Solver++(2M) → images (B,3,image_size,image_size) in [0,1].

    ``prompts``: one per image, with classifier-free guidance at ``guidance_scale`` (1 = the conditional branch
    alone); ``None`` samples unconditionally (zero conditioning or the empty prompt), one image per seed.
    ``seeds``: one per image, each image's noise drawn from its own generator (the same seed gives the same
    image in any batch); otherwise the batch is drawn from one generator seeded with ``seed``. ε- and
    v-prediction UNets are both sampled in ε (v is converted with the schedule).

    ``guide`` is the hook for gradient guidance (BrainDiVE): at each step the predicted clean image x̂₀ (decoded,
    resized to ``image_size``) is scored by ``guide(images, t)`` (per image, to increase) and the noise
    prediction is shifted against the score's gradient with respect to the current sample,
    ε ← ε − ``guide_scale``·√(1−ᾱₜ)·∇ score (classifier guidance, Dhariwal & Nichol 2021); the gradient flows
    through the UNet, the decoder, the resize and the scorer. With ``reuse_eps`` the guidance pass's ε is also the
    step's (one UNet forward and backward per step); without it, a separate gradient-free pass gives the step's ε
    (the reference's order). With ``guide_scale`` 0 both give the unguided images exactly.
    ``guide_grad="x0"`` is an approximation that skips the UNet backward: the score's gradient is taken with
    respect to x̂₀ and the UNet's Jacobian dropped, ∇ₓₜ score ≈ ∇ₓ̂₀ score / √ᾱₜ (as training-free guidance
    methods such as MPGD do); one gradient-free UNet forward per step (``reuse_eps`` does not apply).
    ``guide_window``: the guided share of the steps, ``(start, stop)`` as fractions of the step sequence (step i of
    n is guided when start ≤ i/n < stop); the other steps are plain unguided steps.
    ``embeddings``: for ``conditioning: "clip"`` models, (B, D) CLIP embeddings to condition on instead of the
    prompts' (L2-normalised here; decoded brain activity, MindBridge); ``prompts`` is then ignored.
    """
    sampler = make_sampler(model, scheduler, steps)
    device, dtype = next(model.unet.parameters()).device, next(model.unet.parameters()).dtype
    if embeddings is not None:
        if model.conditioning != "clip":
            raise BrainattError("conditioning on embeddings needs a diffusion model conditioned on the CLIP role")
        cond = F.normalize(embeddings.float(), dim=-1).to(device)
        context = cond if guidance_scale == 1 else torch.cat([torch.zeros_like(cond), cond])
        scale, prompts = guidance_scale, [""] * len(cond)
    elif prompts is None:
        if seeds is None:
            raise BrainattError("unconditional sampling needs seeds: one per image")
        context, scale = unconditional(model, len(seeds)), 1.0
    else:
        cond, uncond = encode_prompts(model, prompts, clip)
        context = cond if guidance_scale == 1 else torch.cat([uncond, cond])
        scale = guidance_scale
    context = context.to(device, dtype)
    if seeds is not None:
        if prompts is not None and len(seeds) != len(prompts):
            raise BrainattError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one seed per prompt")
        generator = torch.Generator().manual_seed(int(seeds[0]))
        z = initial_noise(model, seeds)
    else:
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn((len(prompts), *model_shape(model)), generator=generator)
    z = z.to(device, dtype) * sampler.init_noise_sigma
    v_prediction = model.scheduler.config.get("prediction_type", "epsilon") == "v_prediction"
    step_kwargs = {"eta": eta, "generator": generator} if scheduler == "ddim" else {"generator": generator}

    def predict(x: torch.Tensor, t: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        x_in = sampler.scale_model_input(x, t)
        if len(context) == len(x):
            out = model.unet(x_in, t, **unet_conditioning(model.unet, context)).sample
        else:
            out_u, out_c = model.unet(
                torch.cat([x_in, x_in]), t, **unet_conditioning(model.unet, context)
            ).sample.chunk(2)
            out = out_u + scale * (out_c - out_u)
        return alpha.sqrt() * out + (1 - alpha).sqrt() * x if v_prediction else out

    if guide_grad not in GUIDE_GRADIENTS:
        raise BrainattError(f"unknown guide_grad {guide_grad!r}: choose from {', '.join(GUIDE_GRADIENTS)}")
    start, stop = guide_window
    if not 0 <= start <= stop <= 1:
        raise BrainattError(f"guide_window {guide_window}: give 0 ≤ start ≤ stop ≤ 1 (fractions of the steps)")
    n_steps = len(sampler.timesteps)
    for i, t in enumerate(sampler.timesteps):
        alpha = model.scheduler.alphas_cumprod[int(t)].to(device, dtype)
        guided = guide is not None and start <= i / n_steps < stop
        through_unet = guided and guide_grad == "unet"
        if not through_unet or not reuse_eps:
            with torch.no_grad():
                eps = predict(z, t, alpha)
        if through_unet:
            with torch.enable_grad():
                z_in = z.detach().requires_grad_(True)
                eps_g = predict(z_in, t, alpha)
                x0 = (z_in - (1 - alpha).sqrt() * eps_g) / alpha.sqrt()
                score = guide(from_model_space(model, x0, image_size), t).sum()
                (grad,) = torch.autograd.grad(score, z_in)
            eps = (eps_g.detach() if reuse_eps else eps) - guide_scale * (1 - alpha).sqrt() * grad
        elif guided:  # the UNet's Jacobian dropped: ∇ₓₜ S ≈ ∇ₓ̂₀ S / √ᾱₜ
            with torch.enable_grad():
                x0 = ((z - (1 - alpha).sqrt() * eps) / alpha.sqrt()).requires_grad_(True)
                score = guide(from_model_space(model, x0, image_size), t).sum()
                (grad,) = torch.autograd.grad(score, x0)
            eps = eps - guide_scale * ((1 - alpha) / alpha).sqrt() * grad
        z = sampler.step(eps, t, z, **step_kwargs).prev_sample
    with torch.no_grad():
        return from_model_space(model, z, image_size).float()
