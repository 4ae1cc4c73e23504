# PRECISION: AUTO (README: "Choosing the precision"). Each precision of an AUTO pair's AUTO_CANDIDATES is made once
# per model (candidate), whatever the number of pairs that consider it, then validated and benchmarked on each such
# pair's hardware (validate_candidate, speed_candidate). The choose checkpoint applies the pair's budget to those
# measurements (scripts/choose.py); the chosen candidate is then copied to outputs/<PAIR>/<model>-AUTO.gguf
# (auto_output), a job known only once the choice is made. The budget is a param of choose alone: changing it
# re-decides, and copies again only if the choice changed; a new candidate makes and measures only that one.


use rule quantize as candidate with:
    input:
        unpack(candidate_inputs),
        ready=model_ready,
    output:
        f"{OUT}/candidates/{{model}}-{{precision}}.gguf",
    log:
        f"{LOGS}/quantize/candidates/{{model}}-{{precision}}.log",
    container:
        DEFAULT_CONTAINER_IMAGE
    params:
        options="",


use rule validate as validate_candidate with:
    input:
        gguf=lambda w: candidate(w.model, w.precision),
        base=f"{OUT}/validation/{{model}}.kld",
        tool=lambda w: llama_tool("llama-perplexity"),
    output:
        f"{OUT}/{{pair}}/auto/{{model}}-{{precision}}.json",
    log:
        f"{LOGS}/validation/{{pair}}/auto/{{model}}-{{precision}}.log",


use rule speed as speed_candidate with:
    input:
        gguf=lambda w: candidate(w.model, w.precision),
        tool=lambda w: llama_tool("llama-bench"),
    output:
        f"{OUT}/{{pair}}/auto/{{model}}-{{precision}}.speed.json",
    log:
        f"{LOGS}/speed/{{pair}}/auto/{{model}}-{{precision}}.log",


localrules:
    choose,
    auto_output,


checkpoint choose:
    input:
        unpack(auto_measurements),
    output:
        f"{OUT}/{{pair}}/{{model}}-AUTO.json",
    log:
        f"{LOGS}/choose/{{pair}}/{{model}}-AUTO.log",
    conda:
        "../envs/converter.yaml"
    params:
        precisions=auto_candidates,
        budget=lambda w: json.dumps(budget.budget_of(PAIRS[w.pair])),
        default_max_kld=lambda w: PAIRS[w.pair]["AUTO_MAX_KLD"],
        gguf=lambda w: f"{OUT}/{w.pair}/{w.model}-AUTO.gguf",
        where=lambda w: pipeline.pair_yaml(CONFIG_DIR, w.pair),
        speeds=lambda w, input: (
            "--speeds " + " ".join(input.speeds) if input.speeds else ""
        ),
        script=script_path("choose.py"),
        code=code_digest("choose.py", "budget.py"),
    shell:
        "python {params.script:q} --precisions {params.precisions} --reports {input.reports:q} {params.speeds}"
        " --budget {params.budget:q} --default-max-kld {params.default_max_kld} --gguf {params.gguf:q}"
        " --where {params.where:q} -o {output:q} 2>&1 | tee {log:q}"


rule auto_output:
    input:
        gguf=lambda w: candidate(w.model, chosen_precision(w)),
    output:
        f"{OUT}/{{pair}}/{{model}}-AUTO.gguf",
    log:
        f"{LOGS}/quantize/{{pair}}/{{model}}-AUTO.log",
    conda:
        "../envs/converter.yaml"
    params:
        precision=chosen_precision,
        script=script_path("quantize.py"),
        code=code_digest("quantize.py", "hf2gguf/atomic.py"),
    shell:
        "python {params.script:q} {input.gguf:q} {output:q} {params.precision} > {log:q} 2>&1"
