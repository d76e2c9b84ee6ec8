"""``brainatt <stage> …``: the commands the Snakemake rules call, one per stage.

Bad input raises `BrainattError`; it is printed as one line (``brainatt: error: …``) with exit status 2. Any other
exception is printed as one line too, naming the log file that holds its traceback (exit status 1). Ctrl-C (SIGINT)
and SIGTERM stop the command at once, removing its temporaries (exit status 130 and 143).
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import json
import logging
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from tqdm import tqdm

from brainatt import __version__
from brainatt.errors import BrainattError

log = logging.getLogger("brainatt")


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", required=True, help="NSD root (holds nsddata/, nsddata_betas/, nsddata_stimuli/)")
    p.add_argument("--space", default="func1pt8mm", help="functional space folder (func1pt8mm, func1mm)")
    p.add_argument("--betas", default="betas_fithrf_GLMdenoise_RR", help="betas version folder")


def cmd_synthesize(args: argparse.Namespace) -> None:
    from brainatt.synth.world import GENERATOR_VERSION, WORLD_VERSION_FILE, WorldSpec

    if args.world_version is not None and args.world_version != GENERATOR_VERSION:
        raise BrainattError(
            f"the workflow asks for nsd-synth world version {args.world_version}, but the installed brainatt "
            f"({WORLD_VERSION_FILE}) writes version {GENERATOR_VERSION}: run the workflow of the installed package, "
            "or reinstall brainatt from this checkout (pip install -e .)"
        )
    spec = WorldSpec.from_config(json.loads(args.spec))
    if args.layout == "nsd":
        from brainatt.synth.writer import write_world

        write_world(spec, args.out)
    else:
        from brainatt.synth.algonauts import write_synth_algonauts

        write_synth_algonauts(spec, args.out)


def cmd_preprocess(args: argparse.Namespace) -> None:
    if args.layout == "algonauts":
        from brainatt.prep.algonauts import preprocess_algonauts

        preprocess_algonauts(args.root, args.subject, args.out)
        return
    from brainatt.nsd.layout import NSDLayout
    from brainatt.prep.responses import preprocess_subject

    config = {k: v for k, v in vars(args).items() if k != "func"}
    preprocess_subject(
        NSDLayout(args.root, args.space, args.betas), args.subject, args.out, args.mask, args.atlases, config
    )


def cmd_stimuli(args: argparse.Namespace) -> None:
    if args.layout == "algonauts":
        from brainatt.prep.algonauts import write_algonauts_stimuli

        write_algonauts_stimuli(args.root, args.subjects, args.out)
        return
    from brainatt.nsd.layout import NSDLayout
    from brainatt.prep.stimuli import write_stimuli

    write_stimuli(NSDLayout(args.root, args.space, args.betas), args.subjects, args.out)


def cmd_prep_summary(args: argparse.Namespace) -> None:
    from brainatt.viz.prep import prep_summary

    prep_summary(args.responses, args.table, args.figure)


def cmd_kit(args: argparse.Namespace) -> None:
    from brainatt.models.kit import PARTS, KitConfig, train_kit

    train_kit(KitConfig.from_config(json.loads(args.spec)), args.out, tuple(args.parts or PARTS))


def cmd_kit_eval(args: argparse.Namespace) -> None:
    from brainatt.models.kit import check_manifest
    from brainatt.models.kit_eval import write_kit_quality

    check_manifest(args.kit)
    from brainatt.viz.kit import plot_kit_samples

    table, samples = write_kit_quality(args.kit, args.table)
    plot_kit_samples(samples, args.figure)
    print(table.to_string(index=False))


def cmd_train_captioner(args: argparse.Namespace) -> None:
    from brainatt.contracts.stimuli import Stimuli
    from brainatt.models.kit import KitConfig, embed_images, train_captioner, train_tokenizer
    from brainatt.models.spec import ModelSpec

    stimuli = Stimuli(args.stimuli)
    per_image = stimuli.captions(stimuli.nsd_ids)
    rows = [i for i, caps in enumerate(per_image) for _ in caps]
    if not rows:
        raise BrainattError(f"{args.stimuli}: every caption is empty: the captioner needs image-caption pairs")
    captions = [c for caps in per_image for c in caps]
    clip = ModelSpec.from_config("clip", json.loads(args.clip) if args.clip.startswith("{") else {"name": args.clip})
    embeddings = embed_images(clip, (images for _, images in stimuli.batches(256)), args.kit)[rows]
    cfg = KitConfig.from_config(json.loads(args.spec))
    out = Path(args.out)
    if args.gpt2:
        from brainatt.models.loading import load_gpt2

        lm, tokenizer = load_gpt2(args.gpt2)
    else:
        lm, tokenizer = None, train_tokenizer(captions, cfg.vocab_size, out / "tokenizer")
    log.info("%d image-caption pairs from %d images; GPT-2: %s", len(rows), len(per_image), args.gpt2 or "new")
    train_captioner(cfg, embeddings, captions, tokenizer, out / "captioner", lm)


def cmd_features(args: argparse.Namespace) -> None:
    from brainatt.features.cache import extract_features
    from brainatt.models.spec import ModelSpec

    spec = ModelSpec.from_config(args.role, json.loads(args.model))
    extract_features(args.stimuli, spec, args.out, batch=args.batch, kit_dir=args.kit)


def cmd_encode(args: argparse.Namespace) -> None:
    from brainatt.encoding.encoders import EncodingConfig
    from brainatt.encoding.fit import fit_encoder

    cfg = EncodingConfig.from_config(json.loads(args.config))
    fit_encoder(args.responses, args.features, args.encoder, cfg, args.out, truth=args.truth)


def cmd_encoding_summary(args: argparse.Namespace) -> None:
    from brainatt.encoding.summary import write_encoding_summary
    from brainatt.viz.encoding import plot_accuracy_by_roi

    table = write_encoding_summary(args.encoding, args.subjects, args.encoders, args.table)
    plot_accuracy_by_roi(table, args.figure)
    if args.routing:
        if not args.ground_truth:
            raise BrainattError("--routing scores attention against nsd-synth's truth: pass --ground-truth")
        from brainatt.truth.routing import write_routing_table

        write_routing_table(args.encoding, args.subjects, args.ground_truth, args.routing)


def cmd_prf_recovery(args: argparse.Namespace) -> None:
    from brainatt.truth.prf import write_prf_recovery

    write_prf_recovery(args.encoding, args.subjects, args.encoders, args.features, args.ground_truth, args.out)


def cmd_encoding_figures(args: argparse.Namespace) -> None:
    from brainatt.viz.encoding import make_encoding_figures

    make_encoding_figures(
        args.out_dir,
        subject=args.subject,
        encoding_dir=args.encoding,
        responses_h5=args.responses,
        stimuli_h5=args.stimuli,
        encoders=args.encoders,
        attention_encoder="transformer" if "transformer" in args.encoders else None,
    )


def cmd_mindbridge_text(args: argparse.Namespace) -> None:
    from brainatt.features.cache import extract_text_features
    from brainatt.models.spec import ModelSpec

    spec = ModelSpec.from_config("clip", json.loads(args.model))
    extract_text_features(args.stimuli, spec, args.out, kit_dir=args.kit)


def cmd_mindbridge(args: argparse.Namespace) -> None:
    from brainatt.mindbridge.pipeline import run_regime

    pairs = [item.split("=", 1) for item in args.responses]
    if any(len(p) != 2 for p in pairs):
        raise BrainattError("--responses takes SUBJECT=PATH entries, e.g. subj01=results/prep/subj01/responses.h5")
    run_regime(
        args.regime,
        dict(pairs),
        args.image_features,
        args.text_features,
        args.out,
        json.loads(args.config),
        target=args.target,
        percent=args.percent,
        init=args.init,
    )


def cmd_mindbridge_summary(args: argparse.Namespace) -> None:
    from brainatt.mindbridge.summary import write_recon_table, write_summary

    if args.recon:
        write_recon_table(args.recon, args.table)
    elif args.runs and args.figure:
        write_summary(args.runs, args.table, args.figure)
    else:
        raise BrainattError("mindbridge-summary takes --runs with --figure, or --recon")


def cmd_mindbridge_recon(args: argparse.Namespace) -> None:
    from brainatt.mindbridge.recon import reconstruct
    from brainatt.models.spec import ModelSpec

    table = reconstruct(
        args.run,
        args.subject,
        args.stimuli,
        ModelSpec.from_config("clip", json.loads(args.clip)),
        ModelSpec.from_config("diffusion", json.loads(args.diffusion)),
        args.out,
        n_images=args.n_images,
        samples=args.samples,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        kit_dir=args.kit,
    )
    if args.ground_truth:
        from brainatt.truth.mindbridge import add_truth_scores

        table = add_truth_scores(args.out, args.ground_truth, args.subject)
    print(table.T.to_string(header=False))


def cmd_synth_detector(args: argparse.Namespace) -> None:
    from brainatt.synth.detector import train_detector

    scores = train_detector(Path(args.out), n_images=args.n_images, epochs=args.epochs, seed=args.seed)
    print(json.dumps(scores, indent=1))


def cmd_braindive(args: argparse.Namespace) -> None:
    from brainatt.braindive.pipeline import DiveConfig, generate
    from brainatt.models.loading import default_device
    from brainatt.models.spec import ModelSpec

    generate(
        args.encoder,
        args.responses,
        args.out,
        args.subject,
        args.target,
        DiveConfig.from_config(json.loads(args.config)),
        ModelSpec.from_config("diffusion", json.loads(args.diffusion)),
        ModelSpec.from_config("clip", json.loads(args.clip)) if args.clip else None,
        kit_dir=args.kit,
        device=default_device(),
    )


def cmd_braindive_eval(args: argparse.Namespace) -> None:
    import pandas as pd

    from brainatt.braindive.evaluate import must_shows, read_manifests, score_subject, summarize
    from brainatt.braindive.pipeline import DiveConfig
    from brainatt.encoding.summary import write_tsv
    from brainatt.models.loading import load_clip
    from brainatt.models.spec import ModelSpec
    from brainatt.viz.braindive import plot_cross_activation, plot_gamma, write_galleries

    cfg = DiveConfig.from_config(json.loads(args.config))
    if not len(args.subjects) == len(args.responses) == len(args.encoders):
        raise BrainattError("braindive-eval: give one --responses file and one --encoders folder per subject")
    truth = None
    if args.ground_truth:
        from brainatt.truth.braindive import true_brains

        truth = true_brains(args.ground_truth)
    clip = load_clip(ModelSpec.from_config("clip", json.loads(args.clip)), kit_dir=args.kit) if args.clip else None
    manifests = read_manifests(args.runs)
    scores = {}
    for subject, responses, encoder in zip(args.subjects, args.responses, args.encoders, strict=True):
        if subject not in manifests:
            raise BrainattError(f"braindive-eval: no run of {subject} among --runs: add its braindive folders")
        scores[subject] = score_subject(
            subject, manifests[subject], responses, args.stimuli, encoder, cfg, clip, truth, args.kit
        )
    summary = summarize(scores, cfg)
    write_tsv(summary, args.table)
    images = pd.concat([s.images for s in scores.values()], ignore_index=True)
    write_tsv(images, args.images_table)
    plot_cross_activation(summary, cfg, args.cross_figure)
    plot_gamma(summary, cfg, args.gamma_figure)
    write_galleries(images, summary, cfg, args.galleries)
    print(must_shows(summary, cfg).round(3).to_string(index=False))


def cmd_synth_candidates(args: argparse.Namespace) -> None:
    from brainatt.synth.candidates import write_candidates
    from brainatt.synth.world import WorldSpec

    world = WorldSpec.from_config(json.loads(args.world))
    kit = json.loads(args.kit)
    write_candidates(
        args.out, args.n, args.seed, world.image_size, (world.seed, world.n_images),
        (kit.get("seed", 0), kit.get("n_images", 16000)),
    )  # fmt: skip


def cmd_scuba_candidates(args: argparse.Namespace) -> None:
    from brainatt.features.candidates import write_candidate_embeddings
    from brainatt.models.spec import ModelSpec

    spec = ModelSpec.from_config("clip", json.loads(args.model)) if args.model else None
    write_candidate_embeddings(args.source, args.path, args.out, spec, args.dataset, args.batch, kit_dir=args.kit)


def cmd_scuba(args: argparse.Namespace) -> None:
    from brainatt.models.spec import ModelSpec
    from brainatt.scuba.pipeline import ScubaConfig, run_scuba

    models = {role: ModelSpec.from_config(role, spec) for role, spec in json.loads(args.models).items()}
    truth = None
    if args.ground_truth:
        from brainatt.truth.scuba import true_response_fn

        def truth(ijk):
            return true_response_fn(args.ground_truth, args.subject, ijk)

    cfg = ScubaConfig.from_config(json.loads(args.config))
    run_scuba(args.responses, args.features, args.candidates, args.out, cfg, models, args.kit, truth, args.stimuli)


def cmd_scuba_summary(args: argparse.Namespace) -> None:
    from brainatt.viz.scuba import scuba_summary

    lexicon = json.loads(args.lexicon)
    if not lexicon:
        from brainatt.synth.scenes import CATEGORY_WORDS

        lexicon = {k: list(v) for k, v in CATEGORY_WORDS.items()}
    headline = scuba_summary(
        args.runs, args.responses, lexicon, args.noun, args.min_nc, args.nouns, args.synthesis, args.figures,
        args.gallery, args.braindive,
    )  # fmt: skip
    print(json.dumps(headline, indent=1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brainatt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"brainatt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")

    def add(name: str, func: Callable[[argparse.Namespace], None], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("synthesize", cmd_synthesize, "simulate an nsd-synth world and write it as an NSD (or Algonauts) tree")
    p.add_argument("--spec", default="{}", help="JSON object of synth settings (config section 'synth')")
    p.add_argument("--world-version", help="the world version the workflow expects (refused if not the package's)")
    p.add_argument("--layout", choices=["nsd", "algonauts"], default="nsd")
    p.add_argument("--out", required=True, help="output folder (written atomically)")

    p = add("preprocess", cmd_preprocess, "NSD recipe for one subject → responses.h5 with noise ceilings")
    _dataset_args(p)
    p.add_argument("--layout", choices=["nsd", "algonauts"], default="nsd")
    p.add_argument("--subject", required=True, help="e.g. subj01")
    p.add_argument(
        "--mask",
        nargs="+",
        default=["nsdgeneral"],
        help="union of 'atlas' (labels > 0) or 'atlas/ROI' entries",
    )
    p.add_argument("--atlases", nargs="*", default=[], help="ROI atlases whose labels to keep per voxel")
    p.add_argument("--out", required=True, help="responses.h5 to write")

    p = add("stimuli", cmd_stimuli, "images and captions the subjects saw → images.h5")
    _dataset_args(p)
    p.add_argument("--layout", choices=["nsd", "algonauts"], default="nsd")
    p.add_argument("--subjects", nargs="+", required=True)
    p.add_argument("--out", required=True)

    p = add("prep-summary", cmd_prep_summary, "table and noise-ceiling figure over subjects' responses.h5")
    p.add_argument("--responses", nargs="+", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--figure", required=True)

    p = add("kit", cmd_kit, "train the kit (tokenizer, CLIP, captioner, diffusion) on nsd-synth scenes; resumes")
    p.add_argument("--spec", default="{}", help="JSON object of kit settings (config section 'kit')")
    p.add_argument("--out", required=True, help="kit folder (e.g. results/kit)")
    p.add_argument(
        "--parts", nargs="+", help="retrain only these parts (clip, captioner, diffusion) into an existing kit"
    )

    p = add("kit-eval", cmd_kit_eval, "kit quality on held-out nsd-synth scenes → table and sample figure")
    p.add_argument("--kit", required=True, help="kit folder (with manifest.json)")
    p.add_argument("--table", required=True)
    p.add_argument("--figure", required=True)

    p = add(
        "train-captioner",
        cmd_train_captioner,
        "train a prefix captioner (mapping MLP + GPT-2) on an images.h5's image-caption pairs; checkpoints, resumes",
    )
    p.add_argument("--stimuli", required=True, help="images.h5 with captions (NSD: the COCO captions)")
    p.add_argument(
        "--clip", default="kit:clip", help="CLIP model (name or JSON spec, config models.clip) giving the prefixes"
    )
    p.add_argument("--gpt2", help="pretrained GPT-2 to fine-tune (directory or Hugging Face id); default: a new one")
    p.add_argument("--kit", help="kit folder for kit: models (default: the shipped kit)")
    p.add_argument(
        "--spec",
        default="{}",
        help="JSON settings: seed, checkpoint_every, vocab_size and captioner {prefix_len, steps, batch, lr, width, "
        "layers} (width and layers only for a new GPT-2)",
    )
    p.add_argument("--out", required=True, help="folder: captioner/ (load it with scuba.captioner), checkpoints/")

    p = add("features", cmd_features, "run a frozen model once over the stimuli → feature cache")
    p.add_argument(
        "--role",
        choices=["backbone", "clip"],
        default="backbone",
        help="backbone: patch tokens of its layers and pooled embeddings; clip: CLIP image embeddings (pooled only)",
    )
    p.add_argument("--stimuli", required=True, help="images.h5 from the stimuli rule")
    p.add_argument("--model", required=True, help="JSON model spec (config models.backbone or models.clip)")
    p.add_argument("--kit", help="kit folder for kit: models (default: the shipped kit)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", required=True, help="feature cache .h5 to write")

    p = add("encode", cmd_encode, "fit one encoder for one subject → model, test predictions, voxel scores")
    p.add_argument("--responses", required=True, help="the subject's responses.h5")
    p.add_argument("--features", required=True, help="feature cache .h5")
    p.add_argument("--encoder", required=True, help="transformer, factorized, ridge_pooled or ridge_tokens")
    p.add_argument("--config", default="{}", help="JSON object of encoding settings (config section 'encoding')")
    p.add_argument("--truth", help="nsd-synth ground_truth/{subject}.h5 (adds r against the noise-free truth)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")

    p = add("encoding-summary", cmd_encoding_summary, "per-ROI encoding table, routing vs truth, accuracy figure")
    p.add_argument("--encoding", required=True, help="results/encoding folder ({subject}/{encoder}/...)")
    p.add_argument("--subjects", nargs="+", required=True)
    p.add_argument("--encoders", nargs="+", required=True)
    p.add_argument("--ground-truth", help="nsd-synth ground_truth/ folder (needed for --routing)")
    p.add_argument("--table", required=True, help="encoding.tsv to write")
    p.add_argument("--routing", help="routing.tsv to write (transformer attention vs the true routing)")
    p.add_argument("--figure", required=True, help="accuracy-by-ROI figure to write")

    p = add("prf-recovery", cmd_prf_recovery, "nsd-synth: each retinotopic voxel's pRF centre from occlusion vs truth")
    p.add_argument("--encoding", required=True, help="results/encoding folder ({subject}/{encoder}/...)")
    p.add_argument("--subjects", nargs="+", required=True)
    p.add_argument("--encoders", nargs="+", required=True, help="encoders that read patch tokens")
    p.add_argument("--features", required=True, help="the feature cache .h5 the encoders were fitted on")
    p.add_argument("--ground-truth", required=True, help="nsd-synth ground_truth/ folder")
    p.add_argument("--out", required=True, help="prf_recovery.tsv to write")

    p = add("encoding-figures", cmd_encoding_figures, "one subject's brain maps, voxel scatter and attention maps")
    p.add_argument("--encoding", required=True, help="results/encoding folder ({subject}/{encoder}/...)")
    p.add_argument("--subject", required=True)
    p.add_argument("--encoders", nargs="+", required=True)
    p.add_argument("--responses", required=True, help="the subject's responses.h5")
    p.add_argument("--stimuli", required=True, help="images.h5 (for attention overlays)")
    p.add_argument("--out-dir", required=True, help="figures folder; files land in OUT_DIR/SUBJECT/")

    p = add("braindive", cmd_braindive, "brain-guided diffusion toward one subject's ROI → images + manifest.tsv")
    p.add_argument("--encoder", required=True, help="the subject's saved encoder folder (results/encoding/...)")
    p.add_argument("--responses", required=True, help="the subject's responses.h5 (voxel ROIs)")
    p.add_argument("--subject", required=True)
    p.add_argument("--target", required=True, help="an ROI of braindive.rois, or 'unguided' (the γ = 0 baseline)")
    p.add_argument("--config", default="{}", help="JSON object of braindive settings (config section 'braindive')")
    p.add_argument("--diffusion", required=True, help="JSON model spec (config models.diffusion)")
    p.add_argument("--clip", help="JSON model spec (config models.clip): the prompt's encoder when there is one")
    p.add_argument("--kit", help="kit folder for kit: models (default: the shipped kit)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")

    p = add("braindive-eval", cmd_braindive_eval, "score brain-guided images → tables, figures, galleries")
    p.add_argument("--runs", nargs="+", required=True, help="braindive output folders (every subject × target)")
    p.add_argument("--subjects", nargs="+", required=True)
    p.add_argument("--responses", nargs="+", required=True, help="each subject's responses.h5, in that order")
    p.add_argument("--encoders", nargs="+", required=True, help="each subject's guiding encoder folder")
    p.add_argument("--stimuli", required=True, help="images.h5 (the natural test images)")
    p.add_argument("--config", default="{}", help="JSON object of braindive settings (config section 'braindive')")
    p.add_argument("--clip", help="JSON model spec (config models.clip) for the zero-shot categories")
    p.add_argument("--kit", help="kit folder for kit: models (default: the shipped kit)")
    p.add_argument("--ground-truth", help="nsd-synth ground_truth/ folder: adds the true activations")
    p.add_argument("--table", required=True, help="braindive.tsv to write (per subject × target × image set)")
    p.add_argument("--images-table", required=True, help="per-image manifest with every activation")
    p.add_argument("--cross-figure", required=True)
    p.add_argument("--gamma-figure", required=True)
    p.add_argument("--galleries", required=True, help="galleries folder (results/galleries/braindive)")

    p = add(
        "synth-candidates",
        cmd_synth_candidates,
        "fresh nsd-synth scenes (none a subject saw or the kit trained on) → images.h5 of candidate images",
    )
    p.add_argument("--n", type=int, default=20000, help="number of scenes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world", default="{}", help="JSON synth settings of the world to avoid (config section 'synth')")
    p.add_argument("--kit", default="{}", help="JSON kit settings whose training scenes to avoid (section 'kit')")
    p.add_argument("--out", required=True, help="images.h5 to write")

    p = add(
        "scuba-candidates",
        cmd_scuba_candidates,
        "candidate CLIP image embeddings (raw) from scenes, an image folder or HDF5, or a precomputed file → .h5",
    )
    p.add_argument("--source", required=True, choices=["synth", "images", "folder", "embeddings"])
    p.add_argument("--path", required=True, help="images.h5 / HDF5 of images, image folder, or embedding HDF5")
    p.add_argument("--dataset", help="HDF5 dataset to read (default: images, or embeddings for a precomputed file)")
    p.add_argument("--model", help="JSON CLIP model spec (config models.clip); not needed for --source embeddings")
    p.add_argument("--kit", help="kit folder for kit: models (default: the shipped kit)")
    p.add_argument("--batch", type=int, default=64, help="images embedded at a time")
    p.add_argument("--out", required=True, help="candidate file (.h5) to write")

    p = add("scuba", cmd_scuba, "BrainSCUBA for one subject: voxel encoder, projections, captions, synthesis")
    p.add_argument("--responses", required=True, help="the subject's responses.h5")
    p.add_argument("--subject", required=True)
    p.add_argument("--features", required=True, help="CLIP-role features of the stimuli")
    p.add_argument("--candidates", required=True, help="candidate file from scuba-candidates")
    p.add_argument("--stimuli", help="the images.h5 the subject saw: adds top natural test images for comparison")
    p.add_argument("--models", required=True, help="JSON {clip, captioner, diffusion} model specs (config models)")
    p.add_argument("--config", default="{}", help="JSON object of scuba settings (config section 'scuba')")
    p.add_argument("--kit", help="kit folder for kit: models (default: the shipped kit)")
    p.add_argument("--ground-truth", help="nsd-synth ground_truth/ folder: adds the true response of the images")
    p.add_argument("--out", required=True, help="output folder (written atomically)")

    p = add("scuba-summary", cmd_scuba_summary, "BrainSCUBA noun and synthesis tables, figures and gallery")
    p.add_argument("--runs", nargs="+", required=True, help="results/scuba/{subject}/run folders")
    p.add_argument("--responses", nargs="+", required=True, help="the same subjects' responses.h5 (brain maps)")
    p.add_argument("--lexicon", default="{}", help="JSON category → words (default: nsd-synth's CATEGORY_WORDS)")
    p.add_argument("--noun", default="face", help="category of the brain map of voxels whose captions name it")
    p.add_argument("--min-nc", type=float, default=20.0, help="NC %% of voxels scored for repeat agreement")
    p.add_argument("--braindive", help="braindive_images.tsv: BrainDiVE's kept images beside, in the gallery")
    p.add_argument("--nouns", required=True, help="scuba_nouns.tsv to write")
    p.add_argument("--synthesis", required=True, help="scuba_synthesis.tsv to write")
    p.add_argument("--figures", required=True, help="figures folder")
    p.add_argument("--gallery", required=True, help="gallery index.html to write")

    p = add("mindbridge-text", cmd_mindbridge_text, "CLIP text embeddings of the stimuli's captions → feature file")
    p.add_argument("--stimuli", required=True, help="images.h5 with captions")
    p.add_argument("--model", required=True, help="JSON model spec (config models.clip)")
    p.add_argument("--kit", help="kit folder for kit: models (default: the shipped kit)")
    p.add_argument("--out", required=True, help="feature file .h5 to write")

    p = add("mindbridge", cmd_mindbridge, "train one MindBridge regime → model, test scores and predictions")
    p.add_argument("--regime", required=True, choices=["single", "bridge", "reset", "finetune"])
    p.add_argument("--responses", nargs="+", required=True, help="SUBJECT=responses.h5 for every subject used")
    p.add_argument("--image-features", required=True, help="CLIP image feature file (features rule, role clip)")
    p.add_argument("--text-features", required=True, help="CLIP text feature file (mindbridge-text)")
    p.add_argument("--config", default="{}", help="JSON object with 'model' and 'train' settings")
    p.add_argument("--target", help="the held-out subject (reset, finetune)")
    p.add_argument("--percent", type=float, help="use only this %% of the target's training images, first shown first")
    p.add_argument("--init", help="the cross-subject model's folder (reset, finetune)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")

    p = add(
        "mindbridge-summary",
        cmd_mindbridge_summary,
        "MindBridge regimes (or galleries) → one table (and accuracy-vs-N figure)",
    )
    p.add_argument("--runs", nargs="+", help="regime output folders")
    p.add_argument("--recon", nargs="+", help="gallery folders (instead of --runs): their scores in one table")
    p.add_argument("--table", required=True)
    p.add_argument("--figure", help="accuracy-vs-N figure (with --runs)")

    p = add("mindbridge-recon", cmd_mindbridge_recon, "reconstruct test images from decoded embeddings → gallery")
    p.add_argument("--run", required=True, help="a mindbridge regime folder (holds pred_SUBJECT.npz)")
    p.add_argument("--subject", required=True)
    p.add_argument("--stimuli", required=True, help="images.h5")
    p.add_argument("--clip", required=True, help="JSON model spec (config models.clip)")
    p.add_argument("--diffusion", default='{"name": "kit:diffusion", "source": "diffusers"}', help="JSON model spec")
    p.add_argument("--kit", help="kit folder for kit: models (default: the shipped kit)")
    p.add_argument("--n-images", type=int, default=12)
    p.add_argument("--samples", type=int, default=1, help="samples per image, the kept one chosen by prediction")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--ground-truth", help="nsd-synth ground_truth/ folder: add the true brain's scores")
    p.add_argument("--out", required=True, help="gallery folder (written atomically)")

    p = add(
        "synth-detector",
        cmd_synth_detector,
        "(maintainers) retrain the nsd-synth category detector shipped with the package",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--n-images", type=int, default=12000)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    return parser


class Terminated(BaseException):
    """SIGTERM (as ``scancel``, a job scheduler or ``kill`` send it), raised where the program is, so every
    ``with`` block unwinds: `brainatt.io.atomic_path` removes its temporary."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_on_signal(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM become exceptions for the block, and none is lost in a cleanup callback.

    An exception raised inside a finalizer (h5py's weak-reference registry runs many) is printed as "Exception
    ignored" and dropped, so a Ctrl-C landing there did nothing. The unraisable hook only queues such a signal; a
    helper thread re-delivers it to the main thread once the hook has returned (a signal landing in the hook itself
    would be dropped too), so it lands in ordinary code, or, landing in a finalizer again, is queued again.
    """
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return
    previous_hook = sys.unraisablehook
    pending: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    in_hook = [False]  # a plain flag: setting it runs no Python code a signal could land in

    def redeliver_loop() -> None:
        while (signum := pending.get()) is not None:
            while in_hook[0]:
                time.sleep(0.001)
            time.sleep(0.005)
            _thread.interrupt_main(signum)

    def redeliver(unraisable: sys.UnraisableHookArgs) -> None:
        in_hook[0] = True
        exc = unraisable.exc_value
        if isinstance(exc, Terminated):
            pending.put(exc.signum)
        elif isinstance(exc, KeyboardInterrupt):
            pending.put(signal.SIGINT)
        else:
            previous_hook(unraisable)
        in_hook[0] = False

    helper = threading.Thread(target=redeliver_loop, name="brainatt-signals", daemon=True)
    helper.start()
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, _raise_on_signal) for s in handled}
    sys.unraisablehook = redeliver
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for s, handler in previous.items():
            signal.signal(s, handler)
        pending.put(None)


def traceback_log(command: str) -> Path:
    """Where an unexpected error's traceback goes: ``$BRAINATT_LOG_DIR`` (default: the temporary folder)."""
    folder = Path(os.environ.get("BRAINATT_LOG_DIR") or tempfile.gettempdir())
    return folder / f"brainatt-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def _report_unexpected(command: str, argv: list[str], error: BaseException) -> str:
    """Write the traceback to a log file; return the one line that names it."""
    text = "".join(traceback.format_exception(error))
    what = " ".join(str(error).split())[:300] or "(no message)"
    path = traceback_log(command)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"brainatt {__version__}\nargv: {argv}\n\n{text}")
        where = f"traceback in {path}"
    except OSError as e:  # nowhere to write it: the terminal is the last resort
        print(text, file=sys.stderr, end="")
        where = f"traceback above (cannot write {path}: {e.strerror})"
    return (
        f"brainatt: error: unexpected {type(error).__name__} in `brainatt {command}`: {what} ({where}; "
        "the input was not checked for this, please report it with the log)"
    )


def _last_line(message: str) -> None:
    """Print the run's closing line on a line of its own: a progress bar the error left open (a loop over `tqdm`
    stopped mid-iteration) is closed first, which ends its line."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    print(message, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with _signals_raise():
        return _run(argv)


def _run(argv: list[str]) -> int:
    command = "(starting)"
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s: %(message)s",
            stream=sys.stderr,
        )
        args.func(args)
    except BrainattError as e:
        _last_line(f"brainatt: error: {e}")
        return 2
    except KeyboardInterrupt:
        _last_line(f"brainatt: interrupted (SIGINT): `brainatt {command}` stopped")
        return 130
    except Terminated as e:
        _last_line(f"brainatt: terminated ({e}): `brainatt {command}` stopped")
        return 128 + e.signum
    except Exception as e:
        _last_line(_report_unexpected(command, argv, e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
