#!/usr/bin/env bash
# CECAIServe entry point: build one pair's GGUF inside a Converter directory, like the seed's
# converters/<PAIR>/converter_<pair>.sh /path/to/Converter.
#
#   scripts/cecaiserve_convert.sh PAIR /path/to/Converter [extra snakemake options]
#
# The Converter directory holds configurations/ (converter_args.yaml and <PAIR>/converter_args_<pair>.yaml)
# and models/<MODEL_NAME>/. The GGUF lands in /path/to/Converter/outputs/<PAIR>/<MODEL_NAME>-<PRECISION>.gguf (one per
# model when MODEL_NAME is a list).
# CORES sets the number of cores (default: all); PYTHON the interpreter that has snakemake (default: python3).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 PAIR /path/to/Converter [snakemake options]" >&2
  exit 2
fi
pair=$1
dir=$(cd "$2" && pwd)
shift 2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}
targets=$("$python" "$here/pipeline.py" target "$dir" "$pair") # one per line: one per model of MODEL_NAME
mapfile -t targets <<<"$targets"
exec "$python" -m snakemake --snakefile "$here/../Snakefile" --directory "$dir" --cores "${CORES:-all}" \
  "${targets[@]}" "$@"
