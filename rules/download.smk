# A model folder that is missing, and mapped to a Hugging Face Hub repository in HUB_MODELS, is downloaded
# (scripts/hub_download.py). A checkpoint: what the folder holds (its weights' dtype, its files) is known only
# once it is there (model_ready and hub_pending in rules/common.smk). Local, because cluster nodes often have
# no network.


localrules:
    download,


checkpoint download:
    output:
        f"{MODELS}/{{model}}/{hub_download.SOURCE_FILE}",
    log:
        f"{LOGS}/download/{{model}}.log",
    conda:
        "../envs/converter.yaml"
    params:
        repo=lambda w: hub_download.source(config["HUB_MODELS"], w.model)[0],
        revision=lambda w: hub_download.source(config["HUB_MODELS"], w.model)[1],
        folder=lambda w: f"{MODELS}/{w.model}",
        script=script_path("hub_download.py"),
    shell:
        "python {params.script:q} {params.repo:q} {params.folder:q} --revision {params.revision:q}"
        " 2>&1 | tee {log:q}"
