"""Command lines for the servers users move to when one process is not enough.

``--engine vllm`` starts vLLM's OpenAI server on the runs' shared base with their LoRA adapters
(``--enable-lora --lora-modules name=path``); ``--engine llamacpp`` serves a run's exported GGUF
through llama-cpp-python's OpenAI server (llama.cpp's speed on CPU). Both only build an argv
from the runs here; the CLI checks the package is installed and runs it.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tunesmith.errors import UserInputError

INSTALL_HINT = {
    "vllm": "pip install vllm (Linux with a CUDA GPU)",
    "llamacpp": "pip install 'tunesmith[llamacpp]' (llama-cpp-python with its server)",
}
MODULE = {"vllm": "vllm", "llamacpp": "llama_cpp"}


def require(engine: str) -> None:
    """Raise a usage error naming what to install when ``engine``'s package is missing."""
    if importlib.util.find_spec(MODULE[engine]) is None:
        raise UserInputError(
            f"--engine {engine} needs the {MODULE[engine]} package: {INSTALL_HINT[engine]}"
        )


def _base_path(base: str) -> str:
    """A path vLLM can load: the embedded default's converted checkpoint, else as given."""
    from tunesmith.models.loading import resolve_model

    return resolve_model(base).path if base in ("embedded", "") else base


def vllm_command(
    run_dirs: Sequence[str | Path] = (),
    *,
    model: str | None = None,
    adapters: Mapping[str, str | Path] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
) -> list[str]:
    """vLLM's OpenAI server for one base and its LoRA adapters (or one merged model).

    Every adapter must be LoRA-family (vLLM's multi-LoRA serving) on the same base.
    """
    from tunesmith.models import locate

    named = [(Path(p).resolve().name, locate(p)) for p in run_dirs]
    named += [(n, locate(p)) for n, p in (adapters or {}).items()]
    merged = [a for _, a in named if a.kind != "adapter"]  # full fine-tunes and merged runs
    loras = [(n, a) for n, a in named if a.kind == "adapter"]
    if merged and (loras or len(merged) > 1 or model):
        raise UserInputError("--engine vllm serves one merged model, or one base with adapters")
    if merged:
        served_name = named[0][0]
        argv = _vllm_head(str(merged[0].dir), served_name, host, port, api_key)
        return argv
    bases = {model or a.base_model for _, a in loras} or {model or "embedded"}
    if len(bases) != 1 or "" in bases:
        raise UserInputError(
            f"--engine vllm serves one base per process; these runs use {sorted(bases)}"
        )
    base = bases.pop()
    argv = _vllm_head(_base_path(base), base, host, port, api_key)
    if loras:
        ranks = []
        for _name, art in loras:
            cfg = art.adapter_config or {}
            if art.peft_type != "LORA":
                raise UserInputError(
                    f"{art.path}: vLLM serves LoRA adapters only; merge this run "
                    "(tunesmith merge) and serve the merged model"
                )
            ranks.append(int(cfg.get("r", 8)))
        argv += ["--enable-lora", "--max-lora-rank", str(_vllm_rank(max(ranks)))]
        argv += ["--max-loras", str(len(loras)), "--lora-modules"]
        argv += [f"{name}={art.dir}" for name, art in loras]
    return argv


def _vllm_head(model: str, name: str, host: str, port: int, api_key: str | None) -> list[str]:
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    argv += ["--served-model-name", name, "--host", host, "--port", str(port)]
    return argv + (["--api-key", api_key] if api_key else [])


def _vllm_rank(r: int) -> int:
    """vLLM accepts a fixed set of maximum LoRA ranks; the smallest that holds ``r``."""
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if r <= allowed:
            return allowed
    raise UserInputError(f"LoRA rank {r} is above vLLM's largest (512)")


def find_gguf(source: str | Path) -> Path:
    """A ``.gguf`` file itself, or the one a run directory holds (top level or ``export/``)."""
    p = Path(source)
    if p.suffix == ".gguf" and p.is_file():
        return p
    found = sorted(p.glob("*.gguf")) + sorted(p.glob("export/*.gguf")) if p.is_dir() else []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise UserInputError(f"{source} holds several .gguf files; pass the one to serve")
    raise UserInputError(
        f"{source} holds no .gguf; export one first: tunesmith export {source} --format gguf "
        f"-o {Path(source) / 'model.gguf'}"
    )


def llamacpp_command(
    source: str | Path,
    *,
    name: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    context: int | None = None,
) -> list[str]:
    """llama-cpp-python's OpenAI server for one GGUF (the run's exported model)."""
    gguf = find_gguf(source)
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf)]
    argv += ["--model_alias", name or Path(source).resolve().name.removesuffix(".gguf")]
    argv += ["--host", host, "--port", str(port)]
    if context:
        argv += ["--n_ctx", str(context)]
    return argv + (["--api_key", api_key] if api_key else [])
