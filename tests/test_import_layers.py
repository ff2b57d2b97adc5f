"""The package's layers: no import runs back up the layer order, and transcribe/ never runs the model itself.

Every .py under vllm_whisper/ is parsed with `ast`; every `import` / `from ... import` of a vllm_whisper module
(at module level or inside a function) is an arrow from the importing module's layer to the imported one's.
Layers, lowest first (the issue's order: audio, model_executor, kernels, attention, sampling and _custom_ops at
the bottom, then engine, transcribe, outputs, entrypoints), refined inside the low tier by what each imports
today. Oracles (decoding/: the reference decoder and runner; testing/: test support) are never imported by
production code; testing/ may import anything.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vllm_whisper"

# Lowest first; a module may import its own layer and those below. "" is the package root (vllm_whisper/__init__.py
# re-exports LLM, so it sits with the entrypoints).
LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(layer) for layer in (
    {"_C", "languages", "audio", "kernels", "sampling"},  # no vllm_whisper imports outside themselves
    {"tokenizer", "params", "_custom_ops"},  # the C++/CUDA op wrappers; their torch fallbacks come from sampling/
    {"model_executor"},  # the model; it is handed its attention (encoder function, decoder cache) by the caller
    {"attention"},  # backends and the K/V cache layout they own
    {"engine", "config", "engine_args"},  # engine_args builds EngineConfig and the engine
    {"transcribe"},
    {"decoding"},  # the reference decoder and its runner over transcribe's state machine: an oracle
    {"outputs"},
    {"entrypoints", ""},
))
ORACLES = frozenset({"decoding", "testing"})  # production code never imports these
ANY_LAYER = frozenset({"testing"})  # test support: may import anything

# Known upward arrows, (importing module, imported module), to be emptied as the code moves. None today.
KNOWN_UPWARD_IMPORTS: dict[tuple[str, str], str] = {}

# Modules under transcribe/ that still run the model's forward themselves, each with why.
KNOWN_FORWARD_CALLS: dict[str, str] = {}  # none: word alignment's forced pass is an engine request
# The model's forward passes: WhisperModel's steps, its submodules and nn.Module.forward.
FORWARD_METHODS = frozenset({"encode", "decode", "compute_cross_kv", "compute_logits", "forward", "encoder",
                             "decoder"})


@dataclass(frozen=True)
class Arrow:
    source: str  # importing module, dotted
    target: str  # imported vllm_whisper module, dotted
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(dotted: str) -> bool:
    """Whether a dotted vllm_whisper name is a module or package on disk (else a name inside one)."""
    relative = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    base = PACKAGE / relative
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists() or any(PACKAGE.glob(f"{relative}*.so"))


def imports_of(path: Path) -> list[Arrow]:
    """Every vllm_whisper module `path` imports, wherever the import statement is."""
    source = module_name(path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    arrows: list[Arrow] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from vllm_whisper import _custom_ops` imports the submodule, not the package root.
            submodules = [f"{module}.{alias.name}" for alias in node.names if is_module(f"{module}.{alias.name}")]
            targets = submodules or [module]
        ours = [t for t in targets if t == "vllm_whisper" or t.startswith("vllm_whisper.")]
        arrows += [Arrow(source, t, node.lineno) for t in ours]
    return arrows


def area(module: str) -> str:
    """The top-level part of a vllm_whisper module: "engine" for vllm_whisper.engine.sampler, "" for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(module: str) -> int:
    name = area(module)
    for index, layer in enumerate(LAYERS):
        if name in layer:
            return index
    raise AssertionError(f"{module}: place vllm_whisper.{name} in a layer of tests/test_import_layers.py LAYERS")


MODULES = sorted(PACKAGE.rglob("*.py"))
ARROWS = [arrow for path in MODULES for arrow in imports_of(path)]


def test_the_walk_sees_the_package():
    assert len(MODULES) > 50 and len(ARROWS) > 100
    assert any(a.source == "vllm_whisper.engine.llm_engine" and a.target == "vllm_whisper._custom_ops" for a in ARROWS)


def test_every_module_has_a_layer():
    for path in MODULES:
        name = area(module_name(path))
        if name not in ANY_LAYER:
            layer_of(module_name(path))


def upward(arrow: Arrow) -> bool:
    if area(arrow.source) in ANY_LAYER or area(arrow.source) == area(arrow.target):
        return False
    if area(arrow.target) in ANY_LAYER:
        return True  # testing/ sits above everything
    return layer_of(arrow.target) > layer_of(arrow.source)


def test_no_import_runs_up_the_layers():
    found = {(a.source, a.target): a for a in ARROWS if upward(a)}
    unexpected = [str(a) for key, a in found.items() if key not in KNOWN_UPWARD_IMPORTS]
    assert not unexpected, "imports that run up the layer order:\n" + "\n".join(unexpected)
    stale = [f"{s} -> {t}" for s, t in KNOWN_UPWARD_IMPORTS if (s, t) not in found]
    assert not stale, f"no longer imported: remove from KNOWN_UPWARD_IMPORTS: {stale}"


@pytest.mark.parametrize("lower", ["vllm_whisper.attention", "vllm_whisper.kernels", "vllm_whisper._custom_ops"])
def test_attention_kernels_and_custom_ops_never_import_the_engine(lower):
    offending = [str(a) for a in ARROWS if (a.source == lower or a.source.startswith(lower + "."))
                 and (a.target == "vllm_whisper.engine" or a.target.startswith("vllm_whisper.engine."))]
    assert not offending


def test_production_never_imports_an_oracle():
    offending = [str(a) for a in ARROWS if area(a.target) in ORACLES and area(a.source) not in ORACLES]
    assert not offending, "production code imports test oracles:\n" + "\n".join(offending)


def receiver_is_a_model(node: ast.expr) -> bool:
    """`model`, `self.model`, `loaded.model`, `self.loaded.model`, ... (a name or attribute ending in "model")."""
    if isinstance(node, ast.Name):
        return node.id == "model" or node.id.endswith("_model")
    if isinstance(node, ast.Attribute):
        return node.attr == "model" or node.attr.endswith("_model")
    return False


def forward_calls(path: Path) -> list[str]:
    """Calls of a model's forward passes in one file: model.encode(...), model.decoder(...), model(...)."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in FORWARD_METHODS and receiver_is_a_model(func.value):
            calls.append(f"line {node.lineno}: .{func.attr}(...)")
        elif receiver_is_a_model(func):
            calls.append(f"line {node.lineno}: model(...)")
    return calls


def test_transcribe_never_runs_the_model_forward():
    """transcribe/ plans windows and assembles results; the engine runs the model."""
    files = sorted((PACKAGE / "transcribe").rglob("*.py"))
    found = {module_name(p): calls for p in files if (calls := forward_calls(p))}
    unexpected = {m: calls for m, calls in found.items() if m not in KNOWN_FORWARD_CALLS}
    assert not unexpected, f"transcribe/ calls the model's forward: {unexpected}"
    stale = [m for m in KNOWN_FORWARD_CALLS if m not in found]
    assert not stale, f"no longer calls the model: remove from KNOWN_FORWARD_CALLS: {stale}"


def test_the_forward_check_sees_a_model_call(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f(loaded, tok, mel):\n    tok.encode('x')\n    return loaded.model.encode(mel)\n")
    assert forward_calls(sample) == ["line 3: .encode(...)"]
