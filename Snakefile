"""brainatt: NSD-style fMRI → encoders, brain-guided diffusion, voxel captions, cross-subject decoding."""

from snakemake.utils import min_version, validate

min_version("8.20")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/synth.smk"
include: "workflow/rules/prep.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/encoding.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
