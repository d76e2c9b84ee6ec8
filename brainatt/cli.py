"""``brainatt <stage> …``: the commands the Snakemake rules call, one per stage.

Bad input raises `BrainattError`; it is printed as one line (``brainatt: error: …``) with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from brainatt import __version__
from brainatt.io import BrainattError

log = logging.getLogger("brainatt")


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", required=True, help="NSD root (holds nsddata/, nsddata_betas/, nsddata_stimuli/)")
    p.add_argument("--space", default="func1pt8mm", help="functional space folder (func1pt8mm, func1mm)")
    p.add_argument("--betas", default="betas_fithrf_GLMdenoise_RR", help="betas version folder")


def cmd_synthesize(args: argparse.Namespace) -> None:
    from brainatt.synth.world import WorldSpec

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

    p = add("encoding-figures", cmd_encoding_figures, "one subject's brain maps, voxel scatter and attention maps")
    p.add_argument("--encoding", required=True, help="results/encoding folder ({subject}/{encoder}/...)")
    p.add_argument("--subject", required=True)
    p.add_argument("--encoders", nargs="+", required=True)
    p.add_argument("--responses", required=True, help="the subject's responses.h5")
    p.add_argument("--stimuli", required=True, help="images.h5 (for attention overlays)")
    p.add_argument("--out-dir", required=True, help="figures folder; files land in OUT_DIR/SUBJECT/")

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args.func(args)
    except BrainattError as e:
        print(f"brainatt: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
