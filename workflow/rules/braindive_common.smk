# BrainDiVE: brain-guided diffusion per subject × ROI (plus one unguided γ = 0 set per subject), then the
# evaluation tables, figures and galleries. Needs the guiding encoder from encoding.smk.

BRAINDIVE = config.get("braindive", {})
BRAINDIVE_SUBJECTS = BRAINDIVE.get("subjects") or SUBJECTS
BRAINDIVE_TARGETS = ["unguided", *BRAINDIVE.get("rois", [])]
BRAINDIVE_SETTINGS = json.dumps({k: v for k, v in BRAINDIVE.items() if k != "diffusion"}, sort_keys=True)
# Part of the default target when the config has a braindive section.
BRAINDIVE_OUTPUTS = [
    "results/tables/braindive.tsv",
    "results/tables/braindive_images.tsv",
    "results/figures/braindive_cross_activation.png",
    "results/figures/braindive_gamma.png",
    "results/galleries/braindive",
] if "braindive" in config else []


def braindive_encoder(subject):
    return f"results/encoding/{subject}/{BRAINDIVE.get('encoder', 'ridge_pooled')}"
