# Encoding: backbone feature cache, one encoder per subject × encoder, then the tables and figures.


rule features:
    input:
        stimuli="results/stimuli/images.h5",
        kit=features_kit_input,
    output:
        "results/features/{role}/{slug}.h5",
    wildcard_constraints:
        role="|".join(FEATURE_ROLES),
    params:
        model=lambda wc: json.dumps(config["models"][wc.role], sort_keys=True),
        kit=KIT_DIR,
    log:
        "logs/features/{role}/{slug}.log",
    benchmark:
        "benchmarks/features/{role}/{slug}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=0,  # a cluster profile sets gpu=1 (set-resources); the code uses a GPU when it sees one
    conda:
        ENVS["torch"]
    shell:
        "brainatt features --role {wildcards.role} --stimuli {input.stimuli} --model {params.model:q} "
        "--kit {params.kit:q} --out {output} > {log} 2>&1"


rule encode:
    input:
        responses="results/prep/{subject}/responses.h5",
        features=FEATURES["backbone"],
        dataset=dataset_input,
    output:
        directory("results/encoding/{subject}/{encoder}"),
    params:
        config=encoder_settings,
        truth=lambda wc: f"--truth {GROUND_TRUTH}/{wc.subject}.h5" if TRUTH else "",
    log:
        "logs/encode/{subject}/{encoder}.log",
    benchmark:
        "benchmarks/encode/{subject}/{encoder}.tsv"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=240,
        gpu=0,
    conda:
        ENVS["torch"]
    shell:
        "OMP_NUM_THREADS={threads} brainatt encode --responses {input.responses} --features {input.features} "
        "--encoder {wildcards.encoder} --config {params.config:q} {params.truth} --out {output} > {log} 2>&1"


rule encoding_summary:
    input:
        expand("results/encoding/{subject}/{encoder}", subject=SUBJECTS, encoder=ENCODERS),
        dataset=dataset_input,
    output:
        table=report(
            "results/tables/encoding.tsv",
            caption="../report/encoding_table.rst",
            category="Encoding",
            subcategory="All subjects",
        ),
        routing=(
            [
                report(
                    "results/tables/routing.tsv",
                    caption="../report/routing_table.rst",
                    category="Encoding",
                    subcategory="All subjects",
                )
            ]
            if ROUTING
            else []
        ),
        figure=report(
            "results/figures/encoding_accuracy_by_roi.png",
            caption="../report/encoding_accuracy.rst",
            category="Encoding",
            subcategory="All subjects",
        ),
    params:
        subjects=SUBJECTS,
        encoders=ENCODERS,
        routing=lambda wc, output: f"--routing {output.routing} --ground-truth {GROUND_TRUTH}" if ROUTING else "",
    log:
        "logs/encoding_summary.log",
    benchmark:
        "benchmarks/encoding_summary.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        ENVS["torch"]
    shell:
        "brainatt encoding-summary --encoding results/encoding --subjects {params.subjects} "
        "--encoders {params.encoders} {params.routing} --table {output.table} --figure {output.figure} > {log} 2>&1"


rule prf_recovery:
    input:
        expand("results/encoding/{subject}/{encoder}", subject=SUBJECTS, encoder=PRF_ENCODERS),
        features=FEATURES["backbone"],
        dataset=dataset_input,
    output:
        report(
            "results/tables/prf_recovery.tsv",
            caption="../report/prf_recovery.rst",
            category="Encoding",
            subcategory="All subjects",
        ),
    params:
        subjects=SUBJECTS,
        encoders=PRF_ENCODERS,
        ground_truth=GROUND_TRUTH,
    log:
        "logs/prf_recovery.log",
    benchmark:
        "benchmarks/prf_recovery.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    conda:
        ENVS["torch"]
    shell:
        "OMP_NUM_THREADS={threads} brainatt prf-recovery --encoding results/encoding --subjects {params.subjects} "
        "--encoders {params.encoders} --features {input.features} --ground-truth {params.ground_truth} --out {output} "
        "> {log} 2>&1"


rule encoding_figures:
    input:
        expand("results/encoding/{{subject}}/{encoder}", encoder=ENCODERS),
        responses="results/prep/{subject}/responses.h5",
        stimuli="results/stimuli/images.h5",
    output:
        # one caption per figure: workflow/report/encoding_brain_maps.rst etc.
        **{
            Path(figure).stem: report(
                f"results/figures/{{subject}}/{figure}",
                caption=f"../report/{Path(figure).stem}.rst",
                category="Encoding",
                subcategory="{subject}",
            )
            for figure in SUBJECT_FIGURES
        },
    params:
        encoders=ENCODERS,
    log:
        "logs/encoding_figures/{subject}.log",
    benchmark:
        "benchmarks/encoding_figures/{subject}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        ENVS["report"]
    shell:
        "brainatt encoding-figures --encoding results/encoding --subject {wildcards.subject} "
        "--encoders {params.encoders} --responses {input.responses} --stimuli {input.stimuli} "
        "--out-dir results/figures > {log} 2>&1"
