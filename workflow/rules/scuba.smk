# BrainSCUBA: candidate images → their CLIP embeddings; per subject voxel encoder, projections, captions and
# caption-driven images; then the noun table, figures and gallery over subjects.

SCUBA = config["scuba"]
SCUBA_CANDIDATES = SCUBA["candidates"]
# Candidate CLIP embeddings (results/scuba/candidates/{clip}.h5) from scuba.candidates.source: synth (fresh scenes
# written by synth-candidates), images (an HDF5 of images), folder (an image folder) or embeddings (a precomputed
# file, copied); the last three read scuba.candidates.path.
SCUBA_SOURCE = SCUBA_CANDIDATES.get("source", "synth")
SCUBA_SOURCE_PATH = "results/scuba/candidates/images.h5" if SCUBA_SOURCE == "synth" else SCUBA_CANDIDATES["path"]
SCUBA_EMBEDS_WITH_KIT = SCUBA_SOURCE != "embeddings" and config["models"]["clip"]["name"].startswith("kit:")
SCUBA_EMBEDDINGS = f"results/scuba/candidates/{slug(config['models']['clip']['name'])}.h5"
SCUBA_MODELS = json.dumps(
    {
        "clip": config["models"]["clip"],
        "captioner": {"name": SCUBA["captioner"], "source": "captioner"},
        "diffusion": {"name": SCUBA["diffusion"], "source": "diffusers"},
    },
    sort_keys=True,
)
SCUBA_NOT_RUN_SETTINGS = (
    "candidates",
    "captioner",
    "diffusion",
    "lexicon",
    "noun",
    "train_captioner",
    "in_all",
    "subjects",
)
SCUBA_SETTINGS = json.dumps(
    {k: v for k, v in SCUBA.items() if k not in SCUBA_NOT_RUN_SETTINGS},
    sort_keys=True,
)
SCUBA_SUBJECTS = SCUBA.get("subjects") or SUBJECTS
# BrainDiVE's kept images of the same subjects go beside the caption images in the gallery.
SCUBA_BRAINDIVE = (
    {"braindive": "results/tables/braindive_images.tsv"}
    if BRAINDIVE_OUTPUTS and set(SCUBA_SUBJECTS) & set(BRAINDIVE_SUBJECTS)
    else {}
)
# Part of the default target when the config's scuba section sets in_all (the demo's does).
SCUBA_OUTPUTS = [
    "results/tables/scuba_nouns.tsv",
    "results/tables/scuba_synthesis.tsv",
    "results/figures/scuba",
    "results/galleries/scuba/index.html",
] if SCUBA.get("in_all") else []


rule scuba_candidates:
    input:
        dataset=dataset_input,
    output:
        "results/scuba/candidates/images.h5",
    params:
        n=SCUBA_CANDIDATES["n"],
        seed=SCUBA_CANDIDATES["seed"],
        world=json.dumps(config.get("synth", {}), sort_keys=True),
        kit=json.dumps(config.get("kit", {}), sort_keys=True),
    log:
        "logs/scuba/candidates.log",
    benchmark:
        "benchmarks/scuba/candidates.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENVS["torch"]
    shell:
        "brainatt synth-candidates --n {params.n} --seed {params.seed} --world {params.world:q} "
        "--kit {params.kit:q} --out {output} > {log} 2>&1"


rule scuba_candidate_embeddings:
    input:
        source=SCUBA_SOURCE_PATH,
        kit=kit_input if SCUBA_EMBEDS_WITH_KIT else [],
    output:
        SCUBA_EMBEDDINGS,
    params:
        source=SCUBA_SOURCE,
        dataset=f"--dataset {SCUBA_CANDIDATES['dataset']}" if SCUBA_CANDIDATES.get("dataset") else "",
        model=json.dumps(config["models"]["clip"], sort_keys=True),
        kit=KIT_DIR,
    log:
        "logs/scuba/candidate_embeddings.log",
    benchmark:
        "benchmarks/scuba/candidate_embeddings.tsv"
    threads: 1  # the kit CLIP embeds ~230 images per CPU-second on one thread, ~120 on two
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=0,
    conda:
        ENVS["torch"]
    shell:
        "OMP_NUM_THREADS={threads} brainatt scuba-candidates --source {params.source} --path {input.source:q} {params.dataset} "
        "--model {params.model:q} --kit {params.kit:q} --batch 128 --out {output} > {log} 2>&1"


# A captioner for other images (built by name): mapping network + GPT-2 (pretrained: fine-tuned; else new) on the
# stimuli's image-caption pairs; checkpoints in results/scuba/captioner/checkpoints survive a failed job.
SCUBA_TRAIN = SCUBA["train_captioner"]
SCUBA_TRAIN_SPEC = json.dumps(
    {
        "seed": SCUBA_TRAIN["seed"],
        "checkpoint_every": SCUBA_TRAIN["checkpoint_every"],
        "captioner": {k: SCUBA_TRAIN[k] for k in ("prefix_len", "steps", "batch", "lr") if k in SCUBA_TRAIN},
    },
    sort_keys=True,
)


rule scuba_captioner:
    input:
        stimuli="results/stimuli/images.h5",
        kit=kit_input if config["models"]["clip"]["name"].startswith("kit:") else [],
    output:
        directory("results/scuba/captioner/captioner"),
    params:
        gpt2=f"--gpt2 {SCUBA_TRAIN['gpt2']}" if SCUBA_TRAIN.get("gpt2") else "",
        clip=json.dumps(config["models"]["clip"], sort_keys=True),
        spec=SCUBA_TRAIN_SPEC,
        kit=KIT_DIR,
    log:
        "logs/scuba/captioner.log",
    benchmark:
        "benchmarks/scuba/captioner.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=720,
    conda:
        ENVS["torch"]
    shell:
        "brainatt train-captioner --stimuli {input.stimuli} --clip {params.clip:q} {params.gpt2} --kit {params.kit:q} "
        "--spec {params.spec:q} --out results/scuba/captioner > {log} 2>&1"


rule scuba:
    input:
        responses="results/prep/{subject}/responses.h5",
        features=FEATURES["clip"],
        candidates=SCUBA_EMBEDDINGS,
        stimuli="results/stimuli/images.h5",
        kit=kit_input,
        dataset=dataset_input,
    output:
        directory("results/scuba/{subject}/run"),
    params:
        models=SCUBA_MODELS,
        config=SCUBA_SETTINGS,
        kit=KIT_DIR,
        truth=f"--ground-truth {GROUND_TRUTH}" if TRUTH else "",
    log:
        "logs/scuba/{subject}.log",
    benchmark:
        "benchmarks/scuba/{subject}.tsv"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=0,
    conda:
        ENVS["torch"]
    shell:
        "OMP_NUM_THREADS={threads} brainatt scuba --responses {input.responses} --subject {wildcards.subject} "
        "--features {input.features} --stimuli {input.stimuli} "
        "--candidates {input.candidates} --models {params.models:q} --config {params.config:q} --kit {params.kit:q} "
        "{params.truth} --out {output} > {log} 2>&1"


rule scuba_summary:
    input:
        runs=expand("results/scuba/{subject}/run", subject=SCUBA_SUBJECTS),
        responses=expand("results/prep/{subject}/responses.h5", subject=SCUBA_SUBJECTS),
        **SCUBA_BRAINDIVE,
    output:
        nouns=report(
            "results/tables/scuba_nouns.tsv",
            caption="../report/scuba_nouns.rst",
            category="BrainSCUBA",
            subcategory="All subjects",
        ),
        synthesis=report(
            "results/tables/scuba_synthesis.tsv",
            caption="../report/scuba_synthesis.rst",
            category="BrainSCUBA",
            subcategory="All subjects",
        ),
        # {subject}_{figure}.png: one item per figure, under its subject
        figures=report(
            directory("results/figures/scuba"),
            patterns=["{subject,[^_]+}_{figure}.png"],
            caption="../report/scuba_figures.rst",
            category="BrainSCUBA",
            subcategory="{subject}",
            labels={"figure": "{figure}"},
        ),
        gallery=report(
            "results/galleries/scuba/index.html",
            caption="../report/scuba_gallery.rst",
            category="BrainSCUBA",
            subcategory="All subjects",
        ),
    params:
        lexicon=json.dumps(SCUBA.get("lexicon", {}), sort_keys=True),
        noun=SCUBA["noun"],
        min_nc=SCUBA["min_nc"],
        braindive=lambda wildcards, input: f"--braindive {input.braindive}" if SCUBA_BRAINDIVE else "",
    log:
        "logs/scuba/summary.log",
    benchmark:
        "benchmarks/scuba/summary.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    conda:
        ENVS["torch"]  # its gallery inlines images through brainatt.images, which imports torch
    shell:
        "brainatt scuba-summary --runs {input.runs} --responses {input.responses} --lexicon {params.lexicon:q} "
        "--noun {params.noun} --min-nc {params.min_nc} --nouns {output.nouns} --synthesis {output.synthesis} "
        "--figures {output.figures} --gallery {output.gallery} {params.braindive} > {log} 2>&1"
