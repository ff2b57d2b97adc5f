"""Prepare the folder a lent GPU machine needs from here: the offline aliases' tokenizer and config files.

The GPU machine has its own torch, Triton and transformers but no network and none of the model packages, and the
device tool carries at most 64 MiB (tiny.en's model.bin alone is 75 MB). Random-weight models of the real shapes
need only the tokenizers, so this writes each alias package's small files (config.json, tokenizer.json,
vocabulary.txt; no weights) under <out>/site/ laid out as the packages themselves: with PYTHONPATH=<out>/site,
model_executor.aliases.tokenizer_dir() resolves them there. scripts/gpu_acceptance.sh reads the folder.

    python scripts/gpu_bundle.py [--out .gpu_bundle]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from pathlib import Path

from vllm_whisper.model_executor.aliases import INSTALL_HINT, OFFLINE_ALIASES

SMALL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
LIMIT_BYTES = 64 * 2**20


def bundle(out: Path) -> list[Path]:
    """Write the tokenizer-only alias packages under out/site; return the files written."""
    site = out / "site"
    if site.exists():
        shutil.rmtree(site)
    written: list[Path] = []
    for alias in OFFLINE_ALIASES.values():
        for module in alias.packages:
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                raise SystemExit(f"{module} is not installed here ({INSTALL_HINT}); the bundle copies its files")
            source = Path(list(spec.submodule_search_locations)[0]) / alias.data_subdir
            target = site / module / alias.data_subdir
            target.mkdir(parents=True)
            init = site / module / "__init__.py"
            init.write_text(f'"""{alias.name}: tokenizer and config only (scripts/gpu_bundle.py), no weights."""\n')
            written.append(init)
            for name in SMALL_FILES:
                if (source / name).is_file():
                    shutil.copyfile(source / name, target / name)
                    written.append(target / name)
    total = sum(path.stat().st_size for path in written)
    if total > LIMIT_BYTES:
        raise SystemExit(f"the bundle holds {total / 2**20:.1f} MiB, more than the device tool carries")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / ".gpu_bundle")
    args = parser.parse_args()
    written = bundle(args.out)
    size = sum(path.stat().st_size for path in written) / 2**20
    print(f"[gpu_bundle] {len(written)} files, {size:.1f} MiB in {args.out}/site")


if __name__ == "__main__":
    main()
