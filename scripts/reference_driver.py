"""Runs inside llama.cpp's converter environment (scripts/reference_converter.py starts it): the pinned sdist's
convert_hf_to_gguf.main() with the given arguments, its own gguf-py (checked), and the workflow's provenance KV
pairs added to the header it writes.

    PYTHONPATH=<src>/gguf-py python scripts/reference_driver.py '{"src": ..., "kv": {...}, "argv": [...]}'
"""
import json
import sys
from pathlib import Path


def main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    here = Path(__file__).resolve().parent
    sys.path[:] = [spec["src"]] + [p for p in sys.path if Path(p or ".").resolve() != here]
    import gguf

    if not Path(gguf.__file__).resolve().is_relative_to(Path(spec["src"]).resolve()):
        raise SystemExit(f"error: gguf comes from {gguf.__file__}, not from {spec['src']}/gguf-py")
    write_header = gguf.GGUFWriter.write_header_to_file

    def with_provenance(self, *args, **kwargs):
        for key, value in spec["kv"].items():
            self.add_string(key, value)
        return write_header(self, *args, **kwargs)

    gguf.GGUFWriter.write_header_to_file = with_provenance
    import convert_hf_to_gguf

    sys.argv = ["convert_hf_to_gguf.py", *spec["argv"]]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main(sys.argv[1])
