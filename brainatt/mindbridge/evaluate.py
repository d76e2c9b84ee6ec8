"""Decoding scores: predictions of the test responses, retrieval both ways and two-way identification.

Retrieval is the MindEye protocol: top-1 cosine over ``min(300, test size)``-way random subsets of the test images,
averaged over 30 subsets, image retrieval (brain → image) and brain retrieval (image → brain).
"""

from __future__ import annotations

import numpy as np
import torch

from brainatt.metrics import retrieval_top1, two_way_identification
from brainatt.mindbridge.data import SubjectData, Targets
from brainatt.mindbridge.model import MindBridge


@torch.no_grad()
def predict(model: MindBridge, subject: str, betas: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Image and text embeddings decoded from ``betas`` (n, V) of ``subject`` (eval mode, float32)."""
    model.eval()
    device = next(model.parameters()).device
    images, texts = [], []
    for i in range(0, len(betas), batch):
        x = torch.from_numpy(np.asarray(betas[i : i + batch], np.float32)).to(device)
        image, text = model.decode(model.embed(subject, x))
        images.append(image.float().cpu().numpy())
        texts.append(text.float().cpu().numpy())
    return np.concatenate(images), np.concatenate(texts)


def score(
    pred_image: np.ndarray, pred_text: np.ndarray, true_image: np.ndarray, true_text: np.ndarray, seed: int = 0
) -> dict[str, float]:
    """Retrieval top-1 both ways (image and text targets), two-way identification and mean cosine."""
    img_fwd, img_bwd = retrieval_top1(pred_image, true_image, seed=seed)
    txt_fwd, txt_bwd = retrieval_top1(pred_text, true_text, seed=seed)
    p = pred_image.reshape(len(pred_image), -1)
    t = true_image.reshape(len(true_image), -1)
    cos = (p * t).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1) + 1e-12)
    return {
        "image_retrieval": img_fwd,
        "brain_retrieval": img_bwd,
        "text_retrieval": txt_fwd,
        "text_brain_retrieval": txt_bwd,
        "two_way_id": two_way_identification(pred_image, true_image),
        "cosine": float(cos.mean()),
        "chance": 1 / min(300, len(p)),
    }


def evaluate_subject(model: MindBridge, data: SubjectData, targets: Targets) -> tuple[dict[str, float], dict]:
    """Scores of one subject's test set, and its predictions (``nsd_ids``, ``image``, ``text``)."""
    image, text = predict(model, data.subject, data.test)
    rows = targets.rows(data.test_ids)
    scores = score(image, text, targets.image[rows], targets.text[rows])
    return scores, {"nsd_ids": data.test_ids, "image": image, "text": text}
