"""Shared fixtures: a tiny LFM2-Audio checkpoint made at test time, and its GGUFs.

The checkpoint comes from tools/make_tiny_checkpoint.py (deterministic, seed 0) in
liquid-audio's exact layout; the GGUFs from pylfm's own converter. All are made
once per test session in temporary directories.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` (tools/ is not a package) as a module."""
    module_name = f"_pylfm_tool_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None, f"tools/{name}.py not found"
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses need the module registered while executing
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_tool() -> ModuleType:
    """The tools/make_tiny_checkpoint.py module."""
    return load_tool("make_tiny_checkpoint")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LFM2-Audio checkpoint directory (seed 0), named tiny-lfm2-audio."""
    return tiny_tool.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-lfm2-audio", seed=0)


def _convert(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory, outtype: str):
    from pylfm.converter import convert

    return convert(checkpoint, outdir=tmp_path_factory.mktemp(f"gguf-{outtype}"), outtype=outtype,
                   progress=False)


@pytest.fixture(scope="session")
def tiny_gguf_f32(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """ConvertResult (model_path, mmproj_path) of the tiny checkpoint in F32."""
    return _convert(tiny_checkpoint, tmp_path_factory, "f32")


@pytest.fixture(scope="session")
def tiny_gguf_f16(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """ConvertResult of the tiny checkpoint in F16."""
    return _convert(tiny_checkpoint, tmp_path_factory, "f16")


@pytest.fixture(scope="session")
def tiny_gguf_q8(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """ConvertResult of the tiny checkpoint in Q8_0."""
    return _convert(tiny_checkpoint, tmp_path_factory, "q8_0")


@pytest.fixture(scope="session")
def looping_gguf(tmp_path_factory: pytest.TempPathFactory):
    """ConvertResult (F32) of a tiny model that falls into repetition loops
    (tools/make_looping_checkpoint.py)."""
    from pylfm.converter import convert

    ckpt = load_tool("make_looping_checkpoint").make_looping_checkpoint(tmp_path_factory.mktemp("loop") / "looping")
    return convert(ckpt, outdir=tmp_path_factory.mktemp("gguf-loop"), outtype="f32", progress=False)
