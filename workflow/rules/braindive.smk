# BrainDiVE rules; settings and helpers in braindive_common.smk.


rule braindive:
    input:
        encoder=lambda wc: braindive_encoder(wc.subject),
        responses="results/prep/{subject}/responses.h5",
        kit=kit_input,
    output:
        directory("results/braindive/{subject}/{target}"),
    wildcard_constraints:
        target="|".join(BRAINDIVE_TARGETS),
    params:
        config=BRAINDIVE_SETTINGS,
        diffusion=json.dumps(BRAINDIVE.get("diffusion", {}), sort_keys=True),
        clip=json.dumps(config["models"]["clip"], sort_keys=True),
        kit=KIT_DIR,
    log:
        "logs/braindive/{subject}/{target}.log",
    benchmark:
        "benchmarks/braindive/{subject}/{target}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=0,
    conda:
        ENVS["torch"]
    shell:
        "OMP_NUM_THREADS={threads} brainatt braindive --encoder {input.encoder} --responses {input.responses} "
        "--subject {wildcards.subject} --target {wildcards.target} --config {params.config:q} "
        "--diffusion {params.diffusion:q} --clip {params.clip:q} --kit {params.kit:q} --out {output} > {log} 2>&1"


rule braindive_eval:
    input:
        runs=expand("results/braindive/{subject}/{target}", subject=BRAINDIVE_SUBJECTS, target=BRAINDIVE_TARGETS),
        responses=expand("results/prep/{subject}/responses.h5", subject=BRAINDIVE_SUBJECTS),
        encoders=[braindive_encoder(s) for s in BRAINDIVE_SUBJECTS],
        stimuli="results/stimuli/images.h5",
        dataset=dataset_input,
    output:
        table=report(
            "results/tables/braindive.tsv",
            caption="../report/braindive_table.rst",
            category="BrainDiVE",
            subcategory="All subjects",
        ),
        images=report(
            "results/tables/braindive_images.tsv",
            caption="../report/braindive_images_table.rst",
            category="BrainDiVE",
            subcategory="All subjects",
        ),
        cross=report(
            "results/figures/braindive_cross_activation.png",
            caption="../report/braindive_cross.rst",
            category="BrainDiVE",
            subcategory="All subjects",
        ),
        gamma=report(
            "results/figures/braindive_gamma.png",
            caption="../report/braindive_gamma.rst",
            category="BrainDiVE",
            subcategory="All subjects",
        ),
        # each subject x ROI page (images embedded) is one report item
        galleries=report(
            directory("results/galleries/braindive"),
            patterns=["{subject}/{target}/index.html"],
            caption="../report/braindive_galleries.rst",
            category="BrainDiVE",
            subcategory="{subject}",
            labels={"gallery": "{target}"},
        ),
    params:
        config=BRAINDIVE_SETTINGS,
        clip=json.dumps(config["models"]["clip"], sort_keys=True),
        kit=KIT_DIR,
        truth=f"--ground-truth {GROUND_TRUTH}" if "synth" in config else "",
        subjects=BRAINDIVE_SUBJECTS,
    log:
        "logs/braindive_eval.log",
    benchmark:
        "benchmarks/braindive_eval.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=60,
        gpu=0,
    conda:
        ENVS["torch"]
    shell:
        "brainatt braindive-eval --runs {input.runs} --subjects {params.subjects} --responses {input.responses} "
        "--encoders {input.encoders} --stimuli {input.stimuli} --config {params.config:q} --clip {params.clip:q} "
        "--kit {params.kit:q} {params.truth} --table {output.table} --images-table {output.images} "
        "--cross-figure {output.cross} --gamma-figure {output.gamma} --galleries {output.galleries} > {log} 2>&1"
