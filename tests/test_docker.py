"""Static checks of docker/Dockerfile.cpu, docker/Dockerfile.cuda and .dockerignore (no image is built here).

What can be checked without a Docker daemon: every COPY source exists and reaches the build context, the
ENTRYPOINT module exists, the default arguments parse with the server's own parser, the torch pins equal setup.py's,
the CUDA base images and the torch wheel variant agree, the builder compiles vllm_whisper._C (csrc/ copied, built
with the venv's torch, checked to load; CUDA kernels for the arch list on the devel image), the `ray` stage for Ray
Serve, and the HEALTHCHECK command works against a live /health.
hadolint or `docker build --check` lint the files when either is installed.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile.cpu", "cuda": ROOT / "docker" / "Dockerfile.cuda"}
DOCKERIGNORE = ROOT / ".dockerignore"
PINNED = ("torch", "torchaudio")


# --- a small Dockerfile reader: continuation lines joined, comment lines dropped, one Instruction each ----------

@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    line: int


def parse_dockerfile(path: Path) -> list[Instruction]:
    instructions, parts, start = [], [], 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#") or (not line and not parts):
            continue  # Docker drops comment lines, also inside a continued instruction
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        keyword, _, value = " ".join(p for p in parts if p).partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
        parts = []
    assert not parts, f"{path}: the file ends inside a continued instruction"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by FROM (each group starts with its FROM); global ARGs before the first are dropped."""
    groups: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            groups.append([ins])
        elif groups:
            groups[-1].append(ins)
    return groups


def stage_name(group: list[Instruction]) -> str | None:
    words = group[0].value.split()
    return words[2] if len(words) == 3 and words[1].upper() == "AS" else None


def stage_base(group: list[Instruction], instructions: list[Instruction]) -> str:
    """The image a stage starts from, ARG defaults expanded (another stage's name stays as it is)."""
    return expand(group[0].value.split()[0], arg_defaults(instructions))


def external_bases(instructions: list[Instruction]) -> list[str]:
    """The registry images the stages start from (not the stages built from earlier stages)."""
    groups = stages(instructions)
    names = {stage_name(g) for g in groups}
    return [base for base in (stage_base(g, instructions) for g in groups) if base not in names]


def named_stage(instructions: list[Instruction], name: str) -> list[Instruction]:
    found = [g for g in stages(instructions) if stage_name(g) == name]
    assert len(found) == 1, f"expected one stage named {name!r}"
    return found[0]


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.value:
            name, _, value = ins.value.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def exec_form(ins: Instruction) -> list[str]:
    """ENTRYPOINT/CMD as a JSON list; the shell form would make /bin/sh PID 1 and swallow SIGTERM."""
    value = json.loads(ins.value)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"line {ins.line}: not exec form"
    return value


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [ins for ins in instructions if ins.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


@pytest.fixture(params=sorted(DOCKERFILES), ids=sorted(DOCKERFILES))
def dockerfile(request) -> tuple[str, Path, list[Instruction]]:
    path = DOCKERFILES[request.param]
    assert path.is_file(), f"{path} is missing"
    return request.param, path, parse_dockerfile(path)


def default_server_argv(instructions: list[Instruction]) -> tuple[str, list[str]]:
    """(module, arguments) that `docker run IMAGE` starts: the ENTRYPOINT's tail plus the default CMD."""
    final = stages(instructions)[-1]
    entrypoint = exec_form(only(final, "ENTRYPOINT"))
    assert entrypoint[:2] == ["python", "-m"], entrypoint
    return entrypoint[2], entrypoint[3:] + exec_form(only(final, "CMD"))


# --- .dockerignore, with Docker's matching rules (patterns anchored at the context root, ** for any depth) ------

def _pattern_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i:]:
            end = pattern.index("]", i)
            body = pattern[i + 1:end]
            out, i = out + "[" + ("^" + body[1:] if body.startswith("!") else body) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        rules.append((negate, _pattern_regex(pattern.strip("/"))))
    return rules


def is_ignored(relative: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """A path is left out when the last rule matching it, or one of its parent folders, is not a `!` rule."""
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for negate, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def setup_pins() -> dict[str, str]:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    requires = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                    if isinstance(node, ast.keyword) and node.arg == "install_requires")
    pins = {}
    for requirement in requires:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*==\s*([^\s;]+)", requirement)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


# --- the tests ---------------------------------------------------------------------------------------------------

def test_copy_sources_exist_and_are_in_the_build_context(dockerfile):
    _, path, instructions = dockerfile
    rules = dockerignore_rules()
    copied = []
    for ins in instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        assert ins.keyword == "COPY", f"{path.name}:{ins.line}: use COPY, not ADD"
        words = json.loads(ins.value) if ins.value.startswith("[") else shlex.split(ins.value)
        if any(w.startswith("--from") for w in words):
            continue  # from another stage, not from the repository
        sources = [w for w in words if not w.startswith("--")][:-1]
        assert sources, f"{path.name}:{ins.line}: COPY without a source"
        for source in sources:
            assert (ROOT / source).exists(), f"{path.name}:{ins.line}: COPY {source}: no such file in the repository"
            assert not is_ignored(source, rules), f"{path.name}:{ins.line}: COPY {source} is excluded by .dockerignore"
            copied.append(source)
    # The package itself and what setup.py needs to build it (csrc/: the extension's sources) must be copied.
    assert {"setup.py", "vllm_whisper", "csrc"} <= {c.rstrip("/") for c in copied}, copied


def test_entrypoint_module_exists(dockerfile):
    _, _, instructions = dockerfile
    module, _ = default_server_argv(instructions)
    assert module == "vllm_whisper.entrypoints.api_server"
    assert importlib.util.find_spec(module) is not None


def parse_server_args(argv: list[str]):
    from vllm_whisper.entrypoints.api_server import build_parser

    try:
        return build_parser().parse_args(argv)
    except SystemExit:  # argparse printed why on stderr
        pytest.fail(f"the server's argument parser rejects {argv}")


def test_default_arguments_parse_with_the_servers_parser(dockerfile):
    from vllm_whisper.model_executor.aliases import OFFLINE_ALIASES

    _, _, instructions = dockerfile
    _, argv = default_server_argv(instructions)
    args = parse_server_args(argv)
    assert args.host == "0.0.0.0"  # reachable through `docker run -p`
    assert args.model in OFFLINE_ALIASES  # baked into the image, no download at start-up
    assert str(args.port) in only(stages(instructions)[-1], "EXPOSE").value.split()
    assert args.device is None  # picks CUDA by itself when a GPU is visible

    # `docker run IMAGE --model base ...` replaces CMD; the ENTRYPOINT still binds 0.0.0.0, a later --host wins.
    entrypoint_tail = argv[: len(argv) - len(exec_form(only(stages(instructions)[-1], "CMD")))]
    replaced = parse_server_args(entrypoint_tail + ["--model", "base", "--api-key", "k"])
    assert (replaced.host, replaced.model, replaced.api_key, replaced.port) == ("0.0.0.0", "base", "k", 8000)
    assert parse_server_args(entrypoint_tail + ["--host", "127.0.0.1"]).host == "127.0.0.1"


def test_torch_pins_equal_setup_py(dockerfile):
    name, path, instructions = dockerfile
    pins = setup_pins()
    assert all(p in pins for p in PINNED), f"setup.py no longer pins {PINNED}: {pins}"
    runs = [ins for ins in instructions if ins.keyword == "RUN"]
    torch_runs = [ins for ins in runs if re.search(r"\btorch==", ins.value)]
    assert len(torch_runs) == 1, f"{path.name}: expected one RUN that installs torch"
    found = dict(re.findall(r"\b(torch|torchaudio)==([\w.+]+)", torch_runs[0].value))
    assert found == {p: pins[p] for p in PINNED}, f"{path.name} pins {found}, setup.py {pins}"

    # From the PyTorch index (not an extra index, which lets PyPI's default CUDA 13 build in), before the app.
    index = re.search(r"--index-url\s+\"?(\S+?)\"?(\s|$)", torch_runs[0].value)
    assert index and "--extra-index-url" not in torch_runs[0].value, torch_runs[0].value
    variant = expand(index.group(1), arg_defaults(instructions))
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/(cpu|cu\d{3})", variant), variant
    assert (variant.endswith("/cpu")) == (name == "cpu"), variant
    app_runs = [ins for ins in runs if ".[models]" in ins.value]
    assert len(app_runs) == 1 and app_runs[0].line > torch_runs[0].line, "torch must be installed before the app"


def test_cuda_base_images_match_the_torch_wheel_variant():
    instructions = parse_dockerfile(DOCKERFILES["cuda"])
    args = arg_defaults(instructions)
    groups = stages(instructions)
    for image in external_bases(instructions):
        assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-[a-z-]+-ubuntu24\.04", image), image
    index = re.search(r"--index-url\s+\"?(\S+?)\"?(\s|$)", next(
        ins.value for ins in instructions if ins.keyword == "RUN" and "torch==" in ins.value)).group(1)
    variant = expand(index, args).rsplit("/", 1)[1]
    final = stage_base(groups[-1], instructions)
    major, minor = re.match(r"nvidia/cuda:(\d+)\.(\d+)", final).groups()
    assert variant == f"cu{major}{minor}", f"runtime base {final} but torch wheels {variant}"
    # The builder compiles with nvcc (devel); the runtime stages stay on the small base image. All share one CUDA
    # version and Ubuntu (the venv links the builder's python3.12, the extension its CUDA runtime).
    builder = stage_base(groups[0], instructions)
    assert "-devel-" in builder, builder
    runtimes = [stage_base(g, instructions) for g in groups if stage_name(g) in (None, "ray")]
    assert len(runtimes) == 2 and all("-base-" in image for image in runtimes), runtimes
    versions = {image.split(":")[1].split("-")[0] for image in external_bases(instructions)}
    assert len(versions) == 1, f"builder and runtime images on different CUDA versions: {versions}"


def test_cpu_image_uses_python_312_slim_everywhere():
    for image in external_bases(parse_dockerfile(DOCKERFILES["cpu"])):
        assert image == "python:3.12-slim", image


def test_builder_compiles_the_extension_and_the_runtime_loads_it(dockerfile):
    """vllm_whisper._C is built into the venv by setup.py with the venv's torch, checked to load in the builder
    (with its CUDA kernels on the CUDA image) and imported again in each runtime stage, which has its OpenMP
    runtime."""
    name, path, instructions = dockerfile
    builder = stages(instructions)[0]
    copies = [ins.value.split() for ins in builder if ins.keyword == "COPY"]
    assert ["csrc", "./csrc"] in copies, f"{path.name}: the builder must copy csrc/"
    env = " ".join(ins.value for ins in builder if ins.keyword == "ENV")
    assert f"VLLM_WHISPER_TARGET_DEVICE={name}" in env, f"{path.name}: set the extension's target device"
    [install] = [ins for ins in builder if ins.keyword == "RUN" and ".[models]" in ins.value]
    assert "--no-build-isolation" in install.value, "without it pip builds in an environment without torch"
    assert "HAS_C_EXTENSION" in install.value and "python -P" in install.value, "check the installed _C loads"
    tools = next(ins for ins in builder if ins.keyword == "RUN" and "setuptools==" in ins.value)
    assert tools.line < install.line, "setuptools must be in the venv before a --no-build-isolation install"
    if name == "cuda":
        assert "HAS_CUDA_KERNELS" in install.value
        assert "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}" in env
        if str(ROOT / "csrc") not in sys.path:
            sys.path.insert(0, str(ROOT / "csrc"))
        from setup_ext import gencode_flags  # the flags setup.py builds with

        arch_list = arg_defaults(builder)["TORCH_CUDA_ARCH_LIST"]
        archs = [a.removesuffix("+PTX") for a in arch_list.split(";")]
        assert {"8.0", "9.0"} <= set(archs), f"A100 and H100/H200 must be in {arch_list}"
        flags = gencode_flags(arch_list.split(";"))
        assert "arch=compute_90,code=sm_90" in flags and "arch=compute_90,code=compute_90" in flags
    for group in stages(instructions)[1:]:
        if stage_name(group) in (None, "ray"):
            apt = " ".join(ins.value for ins in group if ins.keyword == "RUN" and "apt-get install" in ins.value)
            assert "libgomp1" in apt, f"{path.name}: stage {stage_name(group) or 'final'} lacks libgomp1 for _C"
            checks = [ins for ins in group if ins.keyword == "RUN" and "load_model" in ins.value]
            assert checks and "vllm_whisper._C" in checks[0].value


def setup_extra(name: str) -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    extras = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.keyword) and node.arg == "extras_require")
    return extras[name]


def test_ray_stage_serves_the_ray_serve_app(dockerfile):
    """`--target ray`: the image every Ray node runs (KubeRay), with setup.py's Ray pin, the proxy's replica-loss
    middleware switched on, and `docker run` starting `serve --ray`. The single server stays the default target."""
    from vllm_whisper.entrypoints.ray_serve.proxy_errors import PROXY_CALLBACK, PROXY_CALLBACK_ENV

    _, path, instructions = dockerfile
    ray_stage = named_stage(instructions, "ray")
    assert stages(instructions)[-1] is not ray_stage, "the last stage is the default target: the single server"
    [ray_pin] = setup_extra("ray")
    installs = [ins for ins in named_stage(instructions, "ray-builder") if ins.keyword == "RUN"]
    assert any(f'"{ray_pin}"' in ins.value for ins in installs), f"{path.name}: install {ray_pin} (setup.py's pin)"
    assert "--from=ray-builder /opt/venv /opt/venv" in " ".join(i.value for i in ray_stage if i.keyword == "COPY")
    env = " ".join(ins.value for ins in ray_stage if ins.keyword == "ENV")
    assert f"{PROXY_CALLBACK_ENV}={PROXY_CALLBACK}" in env
    module, attribute = PROXY_CALLBACK.split(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    apt = " ".join(ins.value for ins in ray_stage if ins.keyword == "RUN")
    assert "wget" in apt, "KubeRay's default probes run wget in the Ray containers"
    assert re.fullmatch(r"\d+", expand(only(ray_stage, "USER").value, arg_defaults(instructions)))
    entrypoint = exec_form(only(ray_stage, "ENTRYPOINT"))
    args = parse_server_args(entrypoint[3:] + exec_form(only(ray_stage, "CMD")))
    assert entrypoint[2] == "vllm_whisper.entrypoints.api_server" and args.ray and args.host == "0.0.0.0"


def test_runtime_stage_runs_as_non_root_with_the_models_baked_in(dockerfile):
    from vllm_whisper.model_executor.aliases import OFFLINE_ALIASES

    _, path, instructions = dockerfile
    final = stages(instructions)[-1]
    args = arg_defaults(instructions)
    user = only(final, "USER")
    assert expand(user.value, args).split(":")[0] not in ("root", "0"), user.value
    assert re.fullmatch(r"\d+", expand(user.value, args)), "numeric USER, so that runAsNonRoot can verify it"
    env = " ".join(ins.value for ins in final if ins.keyword == "ENV")
    assert re.search(r"\bVLLM_WHISPER_CACHE=/\S+", env), "the alias cache must be a fixed path inside the image"
    warmups = [ins for ins in final if ins.keyword == "RUN" and "load_model" in ins.value]
    assert len(warmups) == 1, f"{path.name}: expected one RUN that loads the models"
    assert warmups[0].line > user.line, "load the models as the runtime user, so it owns the joined cache"
    for alias in OFFLINE_ALIASES:
        assert f"load_model('{alias}')" in warmups[0].value, f"{alias} is not loaded at build time"
    assert only(final, "ENTRYPOINT").line > user.line


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_healthcheck_command_follows_the_servers_port(dockerfile, tmp_path):
    _, path, instructions = dockerfile
    final = stages(instructions)[-1]
    health = only(final, "HEALTHCHECK").value
    options, _, command = health.partition(" CMD ")
    assert "--start-period=" in options
    command = json.loads(command)
    assert command[:2] == ["python", "-c"] and len(command) == 3, command
    code = command[2]
    assert "/proc/1/cmdline" in code
    assert f"default='{only(final, 'EXPOSE').value.split()[0]}'" in code, "default port must be the EXPOSEd one"
    module, argv = default_server_argv(instructions)

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def probe(cmdline: list[str]) -> int:
        fake = tmp_path / "cmdline"
        fake.write_bytes(b"\0".join(a.encode() for a in cmdline) + b"\0")
        return subprocess.run([sys.executable, "-c", code.replace("/proc/1/cmdline", str(fake))],
                              capture_output=True, timeout=30).returncode

    with_port = [a if a != "8000" else str(port) for a in argv]
    assert "8000" in argv and with_port != argv
    try:
        assert probe(["python", "-m", module, *with_port]) == 0
        # `docker run --init`: PID 1 is docker-init, the server's arguments follow a `--`.
        assert probe(["/sbin/docker-init", "--", "python", "-m", module, *with_port]) == 0
        assert probe(["python", "-m", module, "--model", "base", f"--port={port}"]) == 0
        _Health.status = 503  # engine stopped
        assert probe(["python", "-m", module, *with_port]) != 0
    finally:
        _Health.status = 200
        server.shutdown()
        server.server_close()
    assert probe(["python", "-m", module, *with_port]) != 0  # nothing listening


def test_dockerignore_keeps_the_context_small_and_the_sources_in():
    rules = dockerignore_rules()
    for left_out in (".venv", ".venv/bin/python", ".git", ".git/HEAD", "vllm_whisper.egg-info",
                     "vllm_whisper/__pycache__/config.cpython-312.pyc", ".pytest_cache", "tests/data/fox.wav",
                     "speech.mp3", "build", "dist", "benchmarks/results/run.json"):
        assert is_ignored(left_out, rules), f"{left_out} should be excluded by .dockerignore"
    for kept in ("setup.py", "README.md", "vllm_whisper", "vllm_whisper/__init__.py",
                 "vllm_whisper/entrypoints/api_server.py", "docker/Dockerfile.cpu", "csrc/setup_ext.py",
                 "csrc/cpu/cache_ops.cpp", "csrc/cuda/cache_kernels.cu", "csrc/torch_bindings.cpp"):
        assert not is_ignored(kept, rules), f"{kept} must stay in the build context"


def _docker_can_build() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        checks = [subprocess.run([docker, *cmd], capture_output=True, timeout=30) for cmd in
                  (["info"], ["buildx", "version"])]
    except (OSError, subprocess.TimeoutExpired):
        return False
    return all(c.returncode == 0 for c in checks)


def test_lint(dockerfile):
    _, path, _ = dockerfile
    hadolint = shutil.which("hadolint")
    if hadolint:
        done = subprocess.run([hadolint, "--failure-threshold", "warning", str(path)],
                              capture_output=True, text=True, timeout=120)
    elif _docker_can_build():
        done = subprocess.run(["docker", "build", "--check", "-f", str(path), str(ROOT)],
                              capture_output=True, text=True, timeout=600)
    else:
        pytest.skip("neither hadolint nor docker with a reachable daemon and buildx is installed")
    assert done.returncode == 0, done.stdout + done.stderr
