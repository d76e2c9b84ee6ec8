# BrainSCUBA: candidate images → their CLIP embeddings; per subject voxel encoder, projections, captions and
# caption-driven images; then the noun table, figures and gallery over subjects.

SCUBA = config["scuba"]
SCUBA_CANDIDATES = SCUBA["candidates"]
# Candidate CLIP embeddings: a user's precomputed feature file, or the CLIP role run over an images.h5 (nsd-synth:
# fresh scenes written by synth-candidates; real data: the images file the config names).
SCUBA_IMAGES = SCUBA_CANDIDATES.get("images") or "results/scuba/candidates/images.h5"
SCUBA_EMBEDDINGS = SCUBA_CANDIDATES.get("embeddings") or (
    f"results/scuba/candidates/features/{slug(config['models']['clip']['name'])}.h5"
)
SCUBA_MODELS = json.dumps(
    {
        "clip": config["models"]["clip"],
        "captioner": {"name": SCUBA["captioner"], "source": "captioner"},
        "diffusion": {"name": SCUBA["diffusion"], "source": "diffusers"},
    },
    sort_keys=True,
)
SCUBA_SETTINGS = json.dumps(
    {k: v for k, v in SCUBA.items() if k not in ("candidates", "captioner", "diffusion", "lexicon", "noun")},
    sort_keys=True,
)


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


rule scuba_candidate_features:
    input:
        stimuli=SCUBA_IMAGES,
        kit=kit_input,
    output:
        "results/scuba/candidates/features/{slug}.h5",
    params:
        model=json.dumps(config["models"]["clip"], sort_keys=True),
        kit=KIT_DIR,
    log:
        "logs/scuba/candidate_features/{slug}.log",
    benchmark:
        "benchmarks/scuba/candidate_features/{slug}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=0,
    conda:
        ENVS["torch"]
    shell:
        "brainatt features --role clip --stimuli {input.stimuli} --model {params.model:q} --kit {params.kit:q} "
        "--out {output} > {log} 2>&1"


rule scuba:
    input:
        responses="results/prep/{subject}/responses.h5",
        features=FEATURES["clip"],
        candidates=SCUBA_EMBEDDINGS,
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
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=0,
    conda:
        ENVS["torch"]
    shell:
        "brainatt scuba --responses {input.responses} --subject {wildcards.subject} --features {input.features} "
        "--candidates {input.candidates} --models {params.models:q} --config {params.config:q} --kit {params.kit:q} "
        "{params.truth} --out {output} > {log} 2>&1"


rule scuba_summary:
    input:
        runs=expand("results/scuba/{subject}/run", subject=SUBJECTS),
        responses=expand("results/prep/{subject}/responses.h5", subject=SUBJECTS),
    output:
        nouns="results/tables/scuba_nouns.tsv",
        synthesis="results/tables/scuba_synthesis.tsv",
        figures=report(
            directory("results/figures/scuba"),
            patterns=["{name}.png"],
            caption="../report/scuba.rst",
            category="BrainSCUBA",
        ),
        gallery=report(
            "results/galleries/scuba/index.html",
            caption="../report/scuba.rst",
            category="BrainSCUBA",
        ),
    params:
        lexicon=json.dumps(SCUBA.get("lexicon", {}), sort_keys=True),
        noun=SCUBA["noun"],
        min_nc=SCUBA["min_nc"],
    log:
        "logs/scuba/summary.log",
    benchmark:
        "benchmarks/scuba/summary.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    conda:
        ENVS["report"]
    shell:
        "brainatt scuba-summary --runs {input.runs} --responses {input.responses} --lexicon {params.lexicon:q} "
        "--noun {params.noun} --min-nc {params.min_nc} --nouns {output.nouns} --synthesis {output.synthesis} "
        "--figures {output.figures} --gallery {output.gallery} > {log} 2>&1"
