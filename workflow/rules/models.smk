# The kit: the shipped one when its manifest matches the configured world, else one retrained by rule `kit`.


rule kit:
    output:
        directory("results/kit"),
    params:
        spec=json.dumps(KIT_SPEC, sort_keys=True),
    log:
        "logs/kit.log",
    benchmark:
        "benchmarks/kit.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=0,
    conda:
        ENVS["torch"]
    shell:
        "brainatt kit --spec {params.spec:q} --out {output} > {log} 2>&1"


rule kit_eval:
    input:
        kit_input,
    output:
        table=report(
            "results/tables/kit_quality.tsv",
            caption="../report/kit_quality.rst",
            category="Models",
            subcategory="Kit",
        ),
        figure=report(
            "results/figures/kit_samples.png",
            caption="../report/kit_samples.rst",
            category="Models",
            subcategory="Kit",
        ),
    params:
        kit=KIT_DIR,
        world=world_version(),  # its ground-truth rows score with the world's brain: a new world reruns it
    log:
        "logs/kit_eval.log",
    benchmark:
        "benchmarks/kit_eval.tsv"
    threads: 1  # as fast as with 2 (78 s vs 73 s, identical table) and it runs beside synthesize
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENVS["torch"]
    shell:
        "brainatt kit-eval --kit {params.kit:q} --table {output.table} --figure {output.figure} > {log} 2>&1"
