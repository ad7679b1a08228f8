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
    from pylfm.files.convert import convert

    return convert(checkpoint, outdir=tmp_path_factory.mktemp(f"gguf-{outtype}"), outtype=outtype,
                   progress=False, with_speech=False)  # ASR only: speech tests convert their own


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
def tiny_speech_f32(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """ConvertResult of the tiny checkpoint in F32 with the speech GGUFs (vocoder and
    detokenizer) next to the model: a model that can speak."""
    from pylfm.files.convert import convert

    return convert(tiny_checkpoint, outdir=tmp_path_factory.mktemp("speech-f32"), outtype="f32", progress=False)


@pytest.fixture(scope="session")
def lively_checkpoint(tiny_tool: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint whose speech is lively (seed 0): replies that talk for a while."""
    return tiny_tool.make_checkpoint(tmp_path_factory.mktemp("lively") / "lively", seed=0, lively=True)


@pytest.fixture(scope="session")
def lively_gguf(lively_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """ConvertResult of the lively checkpoint in F32, with its speech GGUFs next to the
    model: what the live, realtime, chat-completions and voice-page tests talk to."""
    from pylfm.files.convert import convert

    return convert(lively_checkpoint, outdir=tmp_path_factory.mktemp("lively-f32"), outtype="f32", progress=False)


@pytest.fixture(scope="session")
def looping_gguf(tmp_path_factory: pytest.TempPathFactory):
    """ConvertResult (F32) of a tiny model that falls into repetition loops
    (tools/make_looping_checkpoint.py)."""
    from pylfm.files.convert import convert

    ckpt = load_tool("make_looping_checkpoint").make_looping_checkpoint(tmp_path_factory.mktemp("loop") / "looping")
    return convert(ckpt, outdir=tmp_path_factory.mktemp("gguf-loop"), outtype="f32", progress=False)


# ---------------------------------------------------------------------- --device (GPU runs)
# `pytest --device cuda` runs the suite on a GPU: every Model the tests load with
# device="cpu" (or "auto") loads on that device instead, and tests marked `gpu` run.
# Without it (the default, CI) everything runs on the CPU and `gpu` tests are skipped.
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu",
                     help="device the tests' models run on: cpu (default), cuda, cuda:1, metal, gpu")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a GPU; runs only with --device cuda (metal, ...)")
    device = config.getoption("--device")
    if device != "cpu":
        _load_models_on(device)


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if config.getoption("--device") == "cpu":
        skip = pytest.mark.skip(reason="GPU test: run with --device cuda (or metal, ...)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def _load_models_on(device: str) -> None:
    import functools

    from pylfm.engine.device import select_device
    from pylfm.errors import DeviceError
    from pylfm.model import Model

    try:
        if select_device(device) == "cpu":
            raise DeviceError("it resolves to the CPU")
    except DeviceError as e:  # never run a "GPU" suite silently on the CPU
        raise pytest.UsageError(f"--device {device}: {e}") from None
    init = Model.__init__

    @functools.wraps(init)
    def init_on_device(self, *args, **kwargs):
        if kwargs.get("device", "auto") in ("cpu", "auto"):
            kwargs["device"] = device
        init(self, *args, **kwargs)

    Model.__init__ = init_on_device


@pytest.fixture(scope="session")
def test_device(pytestconfig: pytest.Config) -> str:
    """The --device the suite runs on ("cpu" unless asked)."""
    return pytestconfig.getoption("--device")


@pytest.fixture(scope="session")
def device_name(test_device: str) -> str:
    """The first word of `Model.device` for models the tests load: "CPU", "CUDA0", "MTL0"..."""
    if test_device == "cpu":
        return "CPU"
    from pylfm.engine.device import gpu_devices, select_device

    engine = select_device(test_device)
    return next(g["name"] for g in gpu_devices() if g["engine"] == engine)
