"""brainatt: NSD-style fMRI → encoders, brain-guided diffusion, voxel captions, cross-subject decoding."""

import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("8.20")
sys.path.insert(0, f"{workflow.basedir}/workflow/lib")
from config_check import ConfigError, check_schema, check_syntax

SCHEMA = f"{workflow.basedir}/workflow/schemas/config.schema.yaml"
CONFIG_FILES = [str(f) for f in workflow.overwrite_configfiles] or ["config/config.yaml"]


# The embedded demo's config, only when no --configfile is given: a real-data config must not be merged into the
# demo's (its synth section would plan a simulated dataset and ground truth). Config errors are one line with the
# file and line.
if not workflow.overwrite_configfiles:
    try:
        if os.path.exists("config/config.yaml"):
            check_syntax("config/config.yaml")
    except ConfigError as e:
        raise WorkflowError(str(e)) from None

    configfile: "config/config.yaml"


try:
    check_schema(config, SCHEMA, CONFIG_FILES)
except ConfigError as e:
    raise WorkflowError(str(e)) from None
validate(config, SCHEMA)  # fills the schema's defaults


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
