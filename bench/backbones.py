"""Backbone ranking, the digest's claim 9: does the transformer's lead over linear survive a poorer feature basis?

Not a timing. The paper ranks DINOv2 above ResNet-50 and finds the transformer ahead of ridge on both (0.571 vs
0.464 and 0.503 vs 0.445). Here the richer basis is the demo's backbone (the kit's CLIP) and the poorer one the same
architecture untrained: open_clip's own initialisation of the kit's config (one per ``--init-seeds``, so the spread
over initialisations is measured), saved as a local open_clip directory and cached by `features.extract_features`,
the pipeline's own loading and caching path. Per subject the transformer and ``ridge_tokens`` are fitted as the
pipeline does (`fit.fit_predict` with the demo's ``encoding`` settings) and their test images scored with
`evaluate.voxel_scores`; the trained backbone's rows are the demo's own fits. The claim: the trained backbone ranks
above the untrained one for both encoders, and the transformer stays ahead of ridge on both. Fits run in
``--workers`` processes of one thread each.

    python bench/backbones.py                      # after make demo; --no-record prints only
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path

import h5py
import open_clip
import pandas as pd
import torch
from ablations import COLUMNS, demo_settings, family_scores
from common import DEMO_HEADING, code_version, demo_arguments, pool_map, report
from safetensors.torch import save_file

from brainatt.encoding.data import load_subject
from brainatt.encoding.evaluate import NC_MIN, load_test_predictions
from brainatt.encoding.fit import EncodingConfig, fit_predict
from brainatt.features.cache import FeatureCache, extract_features
from brainatt.models.kit import kit_in_use
from brainatt.models.loading import ModelSpec, resolve_kit

ENCODERS = ("transformer", "ridge_tokens")
TRAINED, UNTRAINED = "kit:clip", "kit:clip untrained"


def untrained_clip(kit_clip: Path, out: Path, seed: int = 0) -> Path:
    """``out``: a local open_clip directory with the kit CLIP's config and tokenizer and freshly initialised weights."""
    out.mkdir(parents=True)
    for name in ("open_clip_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(kit_clip / name, out / name)
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{kit_clip}", load_weights=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    return out


def fit_one(results: Path, features: Path | None, init: int | None, subject: str, encoder: str) -> dict:
    """``encoder`` on ``subject`` from the tokens in ``features`` (``None``: the demo's own fit), scored; ``arm`` is
    the backbone, ``init`` the untrained backbone's initialisation seed."""
    torch.set_num_threads(1)
    if features is None:
        _, pred = load_test_predictions(results / "encoding" / subject / encoder / "test_pred.h5")
    else:
        sub = load_subject(results / "prep" / subject / "responses.h5")
        cfg = EncodingConfig.from_config(demo_settings(results, subject))
        pred = fit_predict(encoder, sub, FeatureCache(features), cfg, "cpu")["pred"]
    arm = TRAINED if features is None else UNTRAINED
    return family_scores(results, subject, arm, pred) | {"encoder": encoder, "init": init}


def token_shapes(cache: FeatureCache) -> dict[int, tuple[int, ...]]:
    """Each cached layer's token shape ``(gh, gw, C)``."""
    with h5py.File(cache.path, "r") as f:
        return {layer: f[f"tokens/{layer}"].shape[1:] for layer in cache.layers}


def section(table: pd.DataFrame, subjects: list[str], inits: list[int], workers: int) -> str:
    """The RESULTS.md subsection: per backbone and family, both encoders and the transformer's lead; the untrained
    rows are means over initialisations with their range, and the ranking is counted per subject and seed."""
    code = code_version(("brainatt", "bench/backbones.py"))
    table = table.astype({"init": "Int64"})
    trained = table[table["arm"] == TRAINED].set_index(["encoder", "subject"])["all"]
    untrained = table[table["arm"] == UNTRAINED].set_index(["encoder", "subject", "init"])["all"]
    ranked = sum(trained[enc, subj] > untrained[enc, subj, init] for enc, subj, init in untrained.index)
    ahead = sum(
        untrained["transformer", subj, init] > untrained["ridge_tokens", subj, init]
        for subj in subjects
        for init in inits
    )
    lines = [
        "### Backbone ranking (test images of the demo, `bench/backbones.py`)",
        "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; code: {code}; "
        f"subjects {', '.join(subjects)};\n  {TRAINED}: the demo's own fits; {UNTRAINED}: the same architecture with "
        f"open_clip's initialisation (seeds {', '.join(map(str, inits))}), fitted here; {workers} one-thread workers",
        f"- NC-normalised test accuracy (voxels with NC ≥ {NC_MIN:g} %), mean over subjects (untrained: mean over "
        "seeds, [range of the seeds' means]);\n  lead: transformer − ridge_tokens, mean (lowest subject × seed); "
        "r truth: mean r against the noise-free responses, all voxels",
        f"- all voxels: the trained backbone above the untrained one in {ranked}/{len(untrained)} encoder × subject "
        f"× seed pairs; on the untrained one the transformer ahead of ridge in {ahead}/{len(subjects) * len(inits)}",
        "",
        "| backbone | family | transformer | ridge_tokens | lead |",
        "|---|---|---:|---:|---:|",
    ]
    for backbone in (TRAINED, UNTRAINED):
        rows = table[table["arm"] == backbone].fillna({"init": -1})
        by = {enc: rows[rows["encoder"] == enc].set_index(["subject", "init"]) for enc in ENCODERS}
        for column in (*COLUMNS, "r_truth"):
            lead = by["transformer"][column] - by["ridge_tokens"][column]
            cells = []
            for enc in ENCODERS:
                per_seed = by[enc][column].groupby(level="init").mean()
                spread = f" [{per_seed.min():.3f}–{per_seed.max():.3f}]" if backbone == UNTRAINED else ""
                cells.append(f"{per_seed.mean():.3f}{spread}")
            name = "r truth" if column == "r_truth" else column
            lines.append(f"| {backbone} | {name} | {' | '.join(cells)} | {lead.mean():+.3f} ({lead.min():+.3f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = demo_arguments(__doc__)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--init-seeds", type=int, nargs="+", default=[0, 1, 2], help="the untrained backbone's seeds")
    args = p.parse_args()
    demo_cache = FeatureCache(args.results / "features" / args.features)
    if demo_cache.backbone != TRAINED:
        raise SystemExit(
            f"{demo_cache.path}: backbone {demo_cache.backbone}; this bench compares {TRAINED} with its twin"
        )
    with h5py.File(args.results / "stimuli" / "images.h5", "r") as f:
        image_size = f["images"].shape[1]
    kit_clip = Path(resolve_kit(TRAINED, kit_in_use(image_size, args.results / "kit")))  # the workflow's kit
    jobs = [(args.results, None, None, s, enc) for enc in ENCODERS for s in args.subjects]
    with tempfile.TemporaryDirectory() as tmp:
        for init in args.init_seeds:
            model_dir = untrained_clip(kit_clip, Path(tmp) / f"clip-untrained-{init}", init)
            spec = ModelSpec.from_config("backbone", {"name": str(model_dir), "layers": demo_cache.layers})
            features = extract_features(
                args.results / "stimuli" / "images.h5", spec, Path(tmp) / f"untrained-{init}.h5", device="cpu"
            )
            if token_shapes(FeatureCache(features)) != token_shapes(demo_cache):
                raise SystemExit(f"{kit_clip}: its tokens differ from {demo_cache.path}'s: not the kit the demo used")
            jobs += [(args.results, features, init, s, enc) for enc in ENCODERS for s in args.subjects]
        rows = pool_map(fit_one, jobs, args.workers, lambda row: json.dumps(row, default=float))
    table = pd.DataFrame(rows)
    print(table.to_string())
    report(args, DEMO_HEADING, section(table, args.subjects, args.init_seeds, args.workers), "Backbone ranking")


if __name__ == "__main__":
    main()
