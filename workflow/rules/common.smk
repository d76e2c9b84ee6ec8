import json

DATASET = config["dataset"]
SUBJECTS = DATASET["subjects"]
CONDA_ENV = "../../envs/brainatt.yaml"


wildcard_constraints:
    subject="|".join(SUBJECTS),


def dataset_input(wildcards=None):
    """The simulated dataset when the config has a synth section; real data needs no rule."""
    return DATASET["root"] if "synth" in config else []


def all_outputs():
    return [
        *expand("results/prep/{subject}/responses.h5", subject=SUBJECTS),
        "results/stimuli/images.h5",
        "results/tables/prep.tsv",
    ]
