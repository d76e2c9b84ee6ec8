if "synth" in config:

    rule synthesize:
        output:
            directory(DATASET["root"]),
        params:
            spec=json.dumps(config["synth"], sort_keys=True),
            world_version=world_version(),  # a new world version rewrites the dataset
            layout=DATASET["layout"],
        log:
            "logs/synthesize.log",
        benchmark:
            "benchmarks/synthesize.tsv"
        # One thread: the writer gains nothing from a second (107 s with 1, 104 s with 2, byte-identical files),
        # so kit_eval runs beside it on a 2-core machine.
        threads: 1
        resources:
            mem_mb=6000,
            runtime=30,
        conda:
            ENVS["torch"]
        shell:
            "brainatt synthesize --spec {params.spec:q} --world-version {params.world_version} --layout {params.layout} "
            "--out {output} > {log} 2>&1"
