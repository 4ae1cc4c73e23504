# With HUB_UPLOAD, each model's validated outputs (every pair's GGUF or shards with its .sha256) and a generated
# model card are pushed to a Hugging Face Hub model repository (scripts/hub_publish.py): one commit per model and
# run, none when nothing changed; outputs/published/<model>.json records it once the commit succeeded. HF_TOKEN
# and HF_ENDPOINT are read from the environment. Local, because cluster nodes often have no network.
import hub_publish


localrules:
    publish,


rule publish:
    input:
        publish_inputs,
    output:
        published("{model}"),
    log:
        f"{LOGS}/publish/{{model}}.log",
    conda:
        "../envs/converter.yaml"
    params:
        repo=lambda w: hub_publish.repo_id(HUB_UPLOAD, w.model),
        visibility=hub_publish.visibility(HUB_UPLOAD),
        quantized_by=lambda w: hub_publish.quantized_by(HUB_UPLOAD, w.model),
        model_dir=lambda w: f"{MODELS}/{w.model}",
        script=script_path("hub_publish.py"),
        code=code_digest("hub_publish.py"),
    shell:
        "python {params.script:q} {params.repo:q} {input:q} --model {wildcards.model:q}"
        " --model-dir {params.model_dir:q} --visibility {params.visibility}"
        " --quantized-by {params.quantized_by:q} -o {output:q} 2>&1 | tee {log:q}"
