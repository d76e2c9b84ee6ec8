rule preprocess:
    input:
        dataset_input,
    output:
        "results/prep/{subject}/responses.h5",
    params:
        root=DATASET["root"],
        layout=DATASET["layout"],
        space=DATASET["space"],
        betas=DATASET["betas"],
        mask=DATASET["mask"],
        atlases=DATASET["atlases"],
    log:
        "logs/preprocess/{subject}.log",
    benchmark:
        "benchmarks/preprocess/{subject}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENVS["prep"]
    shell:
        "brainatt preprocess --root {params.root:q} --layout {params.layout} --space {params.space} "
        "--betas {params.betas} --subject {wildcards.subject} --mask {params.mask} "
        "--atlases {params.atlases} --out {output} > {log} 2>&1"


rule stimuli:
    input:
        dataset_input,
    output:
        "results/stimuli/images.h5",
    params:
        root=DATASET["root"],
        layout=DATASET["layout"],
        space=DATASET["space"],
        betas=DATASET["betas"],
        subjects=SUBJECTS,
    log:
        "logs/stimuli.log",
    benchmark:
        "benchmarks/stimuli.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENVS["prep"]
    shell:
        "brainatt stimuli --root {params.root:q} --layout {params.layout} --space {params.space} "
        "--betas {params.betas} --subjects {params.subjects} --out {output} > {log} 2>&1"


rule prep_summary:
    input:
        expand("results/prep/{subject}/responses.h5", subject=SUBJECTS),
    output:
        table=report(
            "results/tables/prep.tsv",
            caption="../report/prep_table.rst",
            category="Preprocessing",
            subcategory="All subjects",
        ),
        figure=report(
            "results/figures/noise_ceiling.png",
            caption="../report/noise_ceiling.rst",
            category="Preprocessing",
            subcategory="All subjects",
        ),
    log:
        "logs/prep_summary.log",
    benchmark:
        "benchmarks/prep_summary.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENVS["report"]
    shell:
        "brainatt prep-summary --responses {input} --table {output.table} --figure {output.figure} > {log} 2>&1"
