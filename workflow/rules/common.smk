import json

from brainatt.features.cache import backbone_slug
from brainatt.models.kit import kit_in_use
from brainatt.models.spec import SHIPPED_KIT

DATASET = config["dataset"]
SUBJECTS = DATASET["subjects"]
CONDA_ENV = "../../envs/brainatt.yaml"


wildcard_constraints:
    subject="|".join(SUBJECTS),
    encoder="|".join(config["encoding"]["encoders"]),


KIT_SPEC = {"image_size": config.get("synth", {}).get("image_size", 64), **config.get("kit", {})}
# A kit trained on another world (or another generator version) is stale: retrain it instead of using it.
KIT_DIR = str(kit_in_use(KIT_SPEC["image_size"]))


def kit_input(wildcards=None):
    return [] if KIT_DIR == str(SHIPPED_KIT) else KIT_DIR


def backbone_kit_input(wildcards=None):
    """A kit backbone needs the (possibly retrained) kit; a pretrained one needs nothing from the DAG."""
    return kit_input() if config["models"]["backbone"]["name"].startswith("kit:") else []


BACKBONE = backbone_slug(config["models"]["backbone"]["name"])
ENCODERS = config["encoding"]["encoders"]
GROUND_TRUTH = f"{DATASET['root']}/ground_truth"  # inside the synthesize output: nsd-synth's noise-free truth
# Routing is scored against nsd-synth's ground truth, for the transformer's attention.
ROUTING = "synth" in config and "transformer" in ENCODERS
SUBJECT_FIGURES = [
    *(["encoding_brain_maps.png"] if DATASET["layout"] == "nsd" else []),
    "encoding_voxel_scatter.png",
    *(["encoding_attention.png"] if "transformer" in ENCODERS else []),
]


def dataset_input(wildcards=None):
    """The simulated dataset when the config has a synth section; real data needs no rule."""
    return DATASET["root"] if "synth" in config else []


def all_outputs():
    return [
        *expand("results/prep/{subject}/responses.h5", subject=SUBJECTS),
        "results/stimuli/images.h5",
        "results/tables/prep.tsv",
        *(["results/tables/kit_quality.tsv"] if "synth" in config else []),
        "results/tables/encoding.tsv",
        *expand("results/figures/{subject}/{figure}", subject=SUBJECTS, figure=SUBJECT_FIGURES),
    ]
