"""A ClipCap-style prefix captioner: CLIP image embedding → MLP → prefix tokens → GPT-2 → caption.

Saved as a directory: ``mapping.json`` + ``mapping.safetensors`` (the MLP) and ``lm/`` (GPT-2 and its tokenizer
in transformers format), so GPT-2 small fine-tuned by ClipCap and the kit's small GPT-2 load the same way.
Like ClipCap's COCO model, the MLP takes raw (unnormalised) CLIP embeddings: their norm matters.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, GPT2LMHeadModel


class PrefixCaptioner(nn.Module):
    def __init__(
        self, lm: GPT2LMHeadModel, tokenizer, clip_dim: int, prefix_len: int = 10, hidden: int | None = None
    ) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.clip_dim = clip_dim
        self.prefix_len = prefix_len
        width = lm.config.n_embd
        self.hidden = hidden or width * prefix_len // 2
        self.mapping = nn.Sequential(
            nn.Linear(clip_dim, self.hidden), nn.Tanh(), nn.Linear(self.hidden, width * prefix_len)
        )

    def prefix(self, clip_embeddings: torch.Tensor) -> torch.Tensor:
        return self.mapping(clip_embeddings).unflatten(-1, (self.prefix_len, self.lm.config.n_embd))

    def forward(self, clip_embeddings: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Mean next-token cross-entropy of ``captions`` (each ended by EOS) given the image prefixes."""
        eos = self.tokenizer.eos_token
        tok = self.tokenizer([c + eos for c in captions], return_tensors="pt", padding=True)
        ids = tok.input_ids.to(clip_embeddings.device)
        mask = tok.attention_mask.to(clip_embeddings.device)
        prefix = self.prefix(clip_embeddings)
        embeds = torch.cat([prefix, self.lm.transformer.wte(ids)], 1)
        full_mask = torch.cat(
            [torch.ones(mask.shape[0], self.prefix_len, dtype=mask.dtype, device=mask.device), mask], 1
        )
        labels = torch.cat(
            [
                torch.full_like(ids[:, : self.prefix_len], -100).expand(-1, self.prefix_len),
                ids.masked_fill(mask == 0, -100),
            ],
            1,
        )
        return self.lm(inputs_embeds=embeds, attention_mask=full_mask, labels=labels).loss

    @torch.no_grad()
    def generate(
        self,
        clip_embeddings: torch.Tensor,
        num_beams: int = 5,
        max_new_tokens: int = 40,
        stop: str | None = ".",
        use_cache: bool = True,
    ) -> list[str]:
        """Beam-search captions, batched over embeddings; beams are scored by length-normalised log-probability.

        Decoding ends at EOS or at ``stop`` when it is a single token of the vocabulary (the text keeps it).
        ``use_cache=False`` re-runs the LM over the whole prefix at every token (only for speed comparisons).
        """
        prefix = self.prefix(clip_embeddings)
        mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        eos = [self.tokenizer.eos_token_id]
        stop_ids = self.tokenizer(stop, add_special_tokens=False).input_ids if stop else []
        if len(stop_ids) == 1:
            eos.append(stop_ids[0])
        out = self.lm.generate(
            inputs_embeds=prefix,
            attention_mask=mask,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=self.tokenizer.pad_token_id,
            do_sample=False,
            length_penalty=1.0,
            early_stopping=True,
            use_cache=use_cache,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.lm.save_pretrained(path / "lm", safe_serialization=True)
        self.tokenizer.save_pretrained(path / "lm")
        state = {k: v.detach().contiguous() for k, v in self.mapping.state_dict().items()}
        save_file(state, str(path / "mapping.safetensors"))
        cfg = {"clip_dim": self.clip_dim, "prefix_len": self.prefix_len, "hidden": self.hidden}
        (path / "mapping.json").write_text(json.dumps(cfg, indent=1))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> PrefixCaptioner:
        path = Path(path)
        cfg = json.loads((path / "mapping.json").read_text())
        lm = GPT2LMHeadModel.from_pretrained(path / "lm", use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(path / "lm")
        model = cls(lm, tokenizer, **cfg)
        model.mapping.load_state_dict({k: v.float() for k, v in load_file(str(path / "mapping.safetensors")).items()})
        return model
