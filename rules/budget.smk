# Every output of a pair with a device budget (MAX_FILE_SIZE, MAX_KLD, MIN_TOP1, MIN_PROMPT_TPS, MIN_GENERATION_TPS
# in its YAML) checked against it, from its size, its validation and its benchmark (scripts/budget.py). The budget
# is a param: changing it reruns only these checks (and the report), never a quantization or a measurement. Local:
# it reads a few small files.


localrules:
    budget,


rule budget:
    input:
        unpack(budget_inputs),
    output:
        f"{OUT}/{{pair}}/{{model}}-{{precision}}.budget.json",
    log:
        f"{LOGS}/budget/{{pair}}/{{model}}-{{precision}}.log",
    # not AUTO: that file is chosen among candidates (rules/auto.smk)
    wildcard_constraints:
        precision=FIXED_PRECISION_RE,
    conda:
        "../envs/converter.yaml"
    params:
        budget=lambda w: json.dumps(budget.budget_of(PAIRS[w.pair])),
        enforce="--enforce" if config["ENFORCE_BUDGETS"] else "",
        where=lambda w: pipeline.pair_yaml(CONFIG_DIR, w.pair),
        reads=lambda w, input: jobs.budget_arguments(input),
        script=script_path("budget.py"),
        code=code_digest("budget.py"),
    shell:
        "python {params.script:q} {input.gguf:q} --budget {params.budget:q} {params.reads} {params.enforce}"
        " --where {params.where:q} -o {output:q} > {log:q} 2>&1"
