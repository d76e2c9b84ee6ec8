"""brainatt: NSD-style fMRI → encoders, brain-guided diffusion, voxel captions, cross-subject decoding."""

from snakemake.utils import min_version, validate

min_version("8.20")


# The embedded demo's config, only when no --configfile is given: a real-data config must not be merged into the
# demo's (its synth section would plan a simulated dataset and ground truth).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/synth.smk"
include: "workflow/rules/prep.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/encoding.smk"
include: "workflow/rules/braindive_common.smk"
include: "workflow/rules/braindive.smk"
include: "workflow/rules/scuba.smk"
include: "workflow/rules/mindbridge.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
        BRAINDIVE_OUTPUTS,
        SCUBA_OUTPUTS,
