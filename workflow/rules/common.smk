# Parse-time helpers. Nothing here imports the brainatt package (or torch): parsing stays fast, and per-rule
# software environments work, since the package is needed only inside the jobs.
import hashlib
import json
import os
import re
from pathlib import Path

DATASET = config["dataset"]
SUBJECTS = DATASET["subjects"]
PACKAGE = Path(workflow.basedir) / "brainatt"
# Conda environments per stage family (--software-deployment-method conda), as paths from workflow/rules/: `prep`
# (NSD readers), `report` (tables and figures from finished outputs), `torch` (everything that runs a model).
ENVS = {family: f"../../envs/{family}.yaml" for family in ("prep", "report", "torch")}
# Exported for the environments' post-deploy scripts, which install this checkout's package.
os.environ.update(BRAINATT_SOURCE=str(Path(workflow.basedir).resolve()))


wildcard_constraints:
    subject="|".join(SUBJECTS),
    encoder="|".join(config["encoding"]["encoders"]),


def slug(name):
    """A file-name-safe model name: `kit:clip` → `kit-clip`, `org/model` → `org-model`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def generator_fingerprint(image_size):
    """`brainatt.synth.scenes.generator_fingerprint`, computed from the same generator.json without importing it."""
    version = json.loads((PACKAGE / "synth/generator.json").read_text())["version"]
    return hashlib.sha256(f"nsd-synth-scenes:v{version}:{image_size}px".encode()).hexdigest()[:16]


def world_version():
    """`brainatt.synth.world.GENERATOR_VERSION`, read from the same world_version.json without importing it."""
    return json.loads((PACKAGE / "synth/world_version.json").read_text())["version"]


def kit_in_use(image_size):
    """`brainatt.models.kit.kit_in_use`: the shipped kit when its manifest records the generator fingerprint at
    this image size, else the one rule `kit` trains into results/kit (a kit trained on another world is stale)."""
    manifest = PACKAGE / "kit/manifest.json"
    try:
        recorded = json.loads(manifest.read_text()).get("generator_fingerprint") if manifest.exists() else None
    except ValueError as e:
        raise WorkflowError(f"{manifest}: the kit manifest is truncated or not JSON ({e}): rerun the kit rule") from None
    return str(PACKAGE / "kit") if recorded == generator_fingerprint(image_size) else "results/kit"


KIT_SPEC = {"image_size": config.get("synth", {}).get("image_size", 64), **config.get("kit", {})}
KIT_DIR = kit_in_use(KIT_SPEC["image_size"])


def kit_input(wildcards=None):
    return [] if KIT_DIR == str(PACKAGE / "kit") else KIT_DIR


# Feature files per model role: results/features/{role}/{slug of the role's model name}.h5.
FEATURE_ROLES = ("backbone", "clip")
FEATURES = {role: f"results/features/{role}/{slug(config['models'][role]['name'])}.h5" for role in FEATURE_ROLES}


def features_kit_input(wildcards):
    """A kit model needs the (possibly retrained) kit; a pretrained one needs nothing from the DAG."""
    name = config["models"][wildcards.role]["name"]
    if slug(name) != wildcards.slug:
        raise ValueError(f"models.{wildcards.role} is {name!r}: its features file is {FEATURES[wildcards.role]}")
    return kit_input() if name.startswith("kit:") else []


ENCODERS = config["encoding"]["encoders"]
# Each encoder's own settings section; an encoder's params are these plus the sections' shared keys, so changing
# one encoder's settings reruns only that encoder.
ENCODER_SECTION = {
    "transformer": "transformer",
    "factorized": "factorized",
    "ridge_pooled": "ridge",
    "ridge_tokens": "ridge",
}
SHARED_ENCODING = {
    k: v for k, v in config["encoding"].items() if k != "encoders" and k not in ENCODER_SECTION.values()
}


def encoder_settings(wildcards):
    section = ENCODER_SECTION[wildcards.encoder]
    return json.dumps({**SHARED_ENCODING, section: config["encoding"].get(section, {})}, sort_keys=True)


SYNTH = "synth" in config
# nsd-synth's noise-free truth sits inside the synthesize output and is matched to voxels by their volume
# coordinates: only a simulated NSD-layout world is scored against it.
TRUTH = SYNTH and DATASET["layout"] == "nsd"
GROUND_TRUTH = f"{DATASET['root']}/ground_truth"
# Routing is scored against the truth, for the transformer's attention.
ROUTING = TRUTH and "transformer" in ENCODERS
# Per-voxel pRF recovery (occlusion of the patch tokens) for the encoders that read them, with the transformer.
PRF_ENCODERS = [e for e in ENCODERS if e in ("transformer", "ridge_tokens", "factorized")] if ROUTING else []
SUBJECT_FIGURES = [
    *(["encoding_brain_maps.png"] if DATASET["layout"] == "nsd" else []),  # volume data only
    *(["encoding_voxel_scatter.png"] if len(ENCODERS) >= 2 else []),
    *(["encoding_attention.png"] if "transformer" in ENCODERS else []),
]


def dataset_input(wildcards=None):
    """The simulated dataset when the config has a synth section; real data needs no rule."""
    return DATASET["root"] if SYNTH else []


def all_outputs():
    return [
        *expand("results/prep/{subject}/responses.h5", subject=SUBJECTS),
        "results/stimuli/images.h5",
        "results/tables/prep.tsv",
        *(["results/tables/kit_quality.tsv"] if SYNTH else []),
        "results/tables/encoding.tsv",
        *(["results/tables/prf_recovery.tsv"] if PRF_ENCODERS else []),
        *expand("results/figures/{subject}/{figure}", subject=SUBJECTS, figure=SUBJECT_FIGURES),
        *(
            ["results/tables/mindbridge.tsv", "results/tables/mindbridge_recon.tsv"]
            if config.get("mindbridge", {}).get("in_all", True)
            else []
        ),
    ]
