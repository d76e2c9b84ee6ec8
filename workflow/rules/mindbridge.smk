# MindBridge: per-subject decoders, one decoder for the source subjects, adapting it to a held-out target subject
# with limited data (reset-tuning, from scratch, full fine-tuning), then one table and figure.


include: "mindbridge_common.smk"


rule mindbridge_text:
    input:
        stimuli="results/stimuli/images.h5",
        kit=lambda wc: kit_input() if config["models"]["clip"]["name"].startswith("kit:") else [],
    output:
        MB_TEXT,
    params:
        model=json.dumps(config["models"]["clip"], sort_keys=True),
        kit=KIT_DIR,
    log:
        "logs/mindbridge/text.log",
    benchmark:
        "benchmarks/mindbridge/text.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    conda:
        ENVS["torch"]
    shell:
        "brainatt mindbridge-text --stimuli {input.stimuli} --model {params.model:q} --kit {params.kit:q} "
        "--out {output} > {log} 2>&1"


rule mindbridge_single:
    input:
        responses="results/prep/{subject}/responses.h5",
        image=MB_IMAGE,
        text=MB_TEXT,
    output:
        directory("results/mindbridge/single/{subject}"),
    params:
        config=mb_settings(False),
    log:
        "logs/mindbridge/single/{subject}.log",
    benchmark:
        "benchmarks/mindbridge/single/{subject}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
        gpu=0,
    conda:
        ENVS["torch"]
    shell:
        "OMP_NUM_THREADS={threads} brainatt mindbridge --regime single --responses {wildcards.subject}={input.responses} "
        "--image-features {input.image} --text-features {input.text} --config {params.config:q} --out {output} "
        "> {log} 2>&1"


rule mindbridge_bridge:
    input:
        responses=expand("results/prep/{subject}/responses.h5", subject=MB_SOURCES),
        image=MB_IMAGE,
        text=MB_TEXT,
    output:
        directory("results/mindbridge/bridge"),
    params:
        config=mb_settings(False),
        responses=mb_responses(MB_SOURCES),
    priority: 1  # the adaptation runs and galleries wait for it
    log:
        "logs/mindbridge/bridge.log",
    benchmark:
        "benchmarks/mindbridge/bridge.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=0,
    conda:
        ENVS["torch"]
    shell:
        "OMP_NUM_THREADS={threads} brainatt mindbridge --regime bridge --responses {params.responses} "
        "--image-features {input.image} --text-features {input.text} --config {params.config:q} --out {output} "
        "> {log} 2>&1"


rule mindbridge_adapt:
    input:
        responses=expand("results/prep/{subject}/responses.h5", subject=SUBJECTS),
        image=MB_IMAGE,
        text=MB_TEXT,
        bridge="results/mindbridge/bridge",
    output:
        directory("results/mindbridge/{mode}/{target}/p{pct}"),
    wildcard_constraints:
        mode="reset|finetune",
        pct=r"[0-9.]+",
    params:
        config=mb_settings(True),
        responses=mb_responses([*MB_SOURCES, MB_TARGET]),
    log:
        "logs/mindbridge/{mode}/{target}/p{pct}.log",
    benchmark:
        "benchmarks/mindbridge/{mode}/{target}/p{pct}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=0,
    conda:
        ENVS["torch"]
    shell:
        "OMP_NUM_THREADS={threads} brainatt mindbridge --regime {wildcards.mode} --responses {params.responses} "
        "--target {wildcards.target} --percent {wildcards.pct} --init {input.bridge} "
        "--image-features {input.image} --text-features {input.text} --config {params.config:q} --out {output} "
        "> {log} 2>&1"


rule mindbridge_scratch:
    input:
        responses="results/prep/{target}/responses.h5",
        image=MB_IMAGE,
        text=MB_TEXT,
    output:
        directory("results/mindbridge/scratch/{target}/p{pct}"),
    params:
        config=mb_settings(True),
    log:
        "logs/mindbridge/scratch/{target}/p{pct}.log",
    benchmark:
        "benchmarks/mindbridge/scratch/{target}/p{pct}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
        gpu=0,
    conda:
        ENVS["torch"]
    shell:
        "OMP_NUM_THREADS={threads} brainatt mindbridge --regime single --responses {wildcards.target}={input.responses} "
        "--percent {wildcards.pct} --image-features {input.image} --text-features {input.text} "
        "--config {params.config:q} --out {output} > {log} 2>&1"


rule mindbridge_summary:
    input:
        mb_runs(),
    output:
        table=report(
            "results/tables/mindbridge.tsv",
            caption="../report/mindbridge_table.rst",
            category="MindBridge",
            subcategory="All subjects",
        ),
        figure=report(
            "results/figures/mindbridge_accuracy_vs_n.png",
            caption="../report/mindbridge.rst",
            category="MindBridge",
            subcategory="All subjects",
        ),
    log:
        "logs/mindbridge/summary.log",
    benchmark:
        "benchmarks/mindbridge/summary.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENVS["report"]
    shell:
        "brainatt mindbridge-summary --runs {input} --table {output.table} --figure {output.figure} > {log} 2>&1"


rule mindbridge_recon:
    input:
        run=mb_gallery_run,
        stimuli="results/stimuli/images.h5",
        dataset=dataset_input,
        kit=kit_input,
    output:
        # the page (images embedded) is the report item; the folder also holds the PNGs, recon.npz and scores.tsv
        report(
            directory("results/galleries/mindbridge/{run}/{subject}"),
            patterns=["index.html"],
            caption="../report/mindbridge_gallery.rst",
            category="MindBridge",
            subcategory="{subject}",
            labels={"gallery": "{run}"},
        ),
    params:
        clip=json.dumps(config["models"]["clip"], sort_keys=True),
        kit=KIT_DIR,
        n=MB.get("gallery_images", 12),
        samples=MB_RECON.get("samples", 1),
        steps=MB_RECON.get("steps", 20),
        guidance=MB_RECON.get("guidance_scale", 3.0),
        truth=f"--ground-truth {GROUND_TRUTH}" if TRUTH else "",
    log:
        "logs/mindbridge/recon/{run}/{subject}.log",
    benchmark:
        "benchmarks/mindbridge/recon/{run}/{subject}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=0,
    conda:
        ENVS["torch"]
    shell:
        "OMP_NUM_THREADS={threads} brainatt mindbridge-recon --run {input.run} --subject {wildcards.subject} "
        "--stimuli {input.stimuli} --clip {params.clip:q} --kit {params.kit:q} --n-images {params.n} "
        "--samples {params.samples} --steps {params.steps} --guidance-scale {params.guidance} {params.truth} "
        "--out {output} > {log} 2>&1"


rule mindbridge_recon_table:
    input:
        MB_GALLERIES,
    output:
        report(
            "results/tables/mindbridge_recon.tsv",
            caption="../report/mindbridge_recon_table.rst",
            category="MindBridge",
            subcategory="All subjects",
        ),
    log:
        "logs/mindbridge/recon_table.log",
    benchmark:
        "benchmarks/mindbridge/recon_table.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENVS["report"]
    shell:
        "brainatt mindbridge-summary --recon {input} --table {output} > {log} 2>&1"


rule mindbridge:
    input:
        rules.mindbridge_summary.output,
        rules.mindbridge_recon_table.output,
