import json

from brainatt.models.kit import kit_is_current
from brainatt.models.loading import SHIPPED_KIT

DATASET = config["dataset"]
SUBJECTS = DATASET["subjects"]
CONDA_ENV = "../../envs/brainatt.yaml"


wildcard_constraints:
    subject="|".join(SUBJECTS),


KIT_SPEC = {"image_size": config.get("synth", {}).get("image_size", 64), **config.get("kit", {})}
# A kit trained on another world (or another generator version) is stale: retrain it instead of using it.
KIT_DIR = str(SHIPPED_KIT) if kit_is_current(SHIPPED_KIT, KIT_SPEC["image_size"]) else "results/kit"


def kit_input(wildcards=None):
    return [] if KIT_DIR == str(SHIPPED_KIT) else KIT_DIR


def dataset_input(wildcards=None):
    """The simulated dataset when the config has a synth section; real data needs no rule."""
    return DATASET["root"] if "synth" in config else []


def all_outputs():
    return [
        *expand("results/prep/{subject}/responses.h5", subject=SUBJECTS),
        "results/stimuli/images.h5",
        "results/tables/prep.tsv",
        *(["results/tables/kit_quality.tsv"] if "synth" in config else []),
    ]
