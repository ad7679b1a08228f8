"""Devices: parsing, choosing among the devices a build sees, the defaults for each device,
and where the engine's work actually ran (the placement recorder).

The device-choice tests feed `select_device` the device lists of builds this machine does not
have (CUDA with two GPUs, CUDA without a driver, Metal), in exactly the form
``pylfm.system_info()`` reports them; the rest run on the installed build. Placement tests
run the real engine on the tiny checkpoint: on the CPU everything must be on the CPU; with
``pytest --device cuda`` (marker ``gpu``) the encoder, the prefill and the decode must be on
the GPU.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import pylfm
from pylfm.engine import device as dev
from pylfm.errors import DeviceError

RATE = 16000
CPU_DEV = {"name": "CPU", "description": "AMD EPYC", "backend": "CPU", "type": "cpu", "memory_total": 0}
CPU_ONLY = {"backends": ["CPU"], "devices": [CPU_DEV]}
CUDA_NO_DRIVER = {"backends": ["CUDA", "CPU"], "devices": [CPU_DEV]}


def gpu(name, backend, description):
    return {"name": name, "description": description, "backend": backend, "type": "gpu", "memory_total": 1 << 34}


TWO_CUDA = {"backends": ["CUDA", "CPU"],
            "devices": [gpu("CUDA0", "CUDA", "NVIDIA H100"), gpu("CUDA1", "CUDA", "NVIDIA L4"), CPU_DEV]}
METAL = {"backends": ["MTL", "BLAS", "CPU"], "devices": [gpu("MTL0", "MTL", "Apple M3"), CPU_DEV]}


def chirp(seconds=3.0):
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * (200 * t + 0.5 * (1600 / seconds) * t * t))).astype(np.float32)


# ---------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("text, want", [
    ("auto", ("auto", None)), ("CPU", ("cpu", None)), (" cuda:1 ", ("cuda", 1)), ("metal", ("metal", None)),
    ("gpu:0", ("gpu", 0)), ("hip:2", ("hip", 2)),
])
def test_parse(text, want):
    assert dev.parse_device(text) == want


@pytest.mark.parametrize("bad", ["tpu", "cuda:", "cuda:x", "cuda:-1", "cuda:1:2", "cpu:0", "auto:1", "", 0, None])
def test_parse_rejects(bad):
    with pytest.raises(DeviceError, match="unknown device|must be a string"):
        dev.parse_device(bad)


# ---------------------------------------------------------------------------- choosing
def test_cpu_only_build():
    assert dev.select_device("auto", CPU_ONLY) == "cpu"
    assert dev.select_device("cpu", TWO_CUDA) == "cpu"
    with pytest.raises(DeviceError, match=r"not available in this build \(backends: CPU\).*DGGML_CUDA=on"):
        dev.select_device("cuda", CPU_ONLY)
    with pytest.raises(DeviceError, match="Apple Silicon"):
        dev.select_device("metal", CPU_ONLY)
    with pytest.raises(DeviceError, match="install a GPU build"):
        dev.select_device("gpu", CPU_ONLY)


def test_cuda_build_without_driver():
    # What a CUDA build reports on a machine without an NVIDIA driver: the backend is
    # compiled in, but it has no device. "auto" runs on the CPU; "cuda" says why it cannot.
    assert dev.select_device("auto", CUDA_NO_DRIVER) == "cpu"
    with pytest.raises(DeviceError, match="has CUDA, but it sees no CUDA device.*nvidia-smi"):
        dev.select_device("cuda", CUDA_NO_DRIVER)


def test_cuda_index_selects_that_gpu():
    assert dev.select_device("auto", TWO_CUDA) == "cuda:0"
    assert dev.select_device("cuda", TWO_CUDA) == "cuda:0"
    assert dev.select_device("cuda:1", TWO_CUDA) == "cuda:1"
    assert dev.select_device("gpu:1", TWO_CUDA) == "cuda:1"
    with pytest.raises(DeviceError, match=r"'cuda:2' does not exist.*2 CUDA device.*cuda:1 = NVIDIA L4"):
        dev.select_device("cuda:2", TWO_CUDA)
    with pytest.raises(DeviceError, match="not available in this build"):
        dev.select_device("metal", TWO_CUDA)


def test_metal_maps_to_ggml_backend():
    # ggml names the Metal backend "MTL": the engine must be asked for "mtl", not "metal".
    assert dev.select_device("metal", METAL) == "mtl:0"
    assert dev.select_device("auto", METAL) == "mtl:0"
    assert [g["kind"] for g in dev.gpu_devices(METAL)] == ["metal"]


# Every GPU backend of llama.cpp 0c1e57098 (llama-cpp-python 0.3.36) by the name it registers
# (its ggml_backend_<x>_reg's get_name, which the engine matches in any case), and the word a
# user writes for it. CUDA, ROCm, MUSA, SYCL, Vulkan and WebGPU come from the public headers
# (checked against the installed ones below); Metal ("MTL", ggml-metal.cpp), OpenCL
# (ggml-opencl.cpp) and CANN (ggml-cann.cpp) name themselves in their sources only.
GGML_GPU_BACKENDS = {"CUDA": "cuda", "MTL": "metal", "Vulkan": "vulkan", "ROCm": "hip", "SYCL": "sycl",
                     "MUSA": "musa", "OpenCL": "opencl", "WebGPU": "webgpu", "CANN": "cann"}


def test_the_table_is_ggmls_backends():
    assert {b.registry: word for word, b in dev.BACKENDS.items()} == GGML_GPU_BACKENDS
    assert set(dev.DEVICES) == {"auto", "cpu", "gpu", *GGML_GPU_BACKENDS.values()}


def test_registry_names_match_the_installed_headers():
    """The names the installed llama.cpp's headers define (its wheel ships them)."""
    import importlib.util
    import re
    from pathlib import Path

    spec = importlib.util.find_spec("llama_cpp")
    include = Path(spec.origin).parents[1] / "include" if spec and spec.origin else None
    if include is None or not (include / "ggml-cuda.h").is_file():
        pytest.skip("llama-cpp-python's headers are not installed")
    defined = {}
    for header, macro in (("ggml-cuda.h", "GGML_CUDA_NAME"), ("ggml-sycl.h", "GGML_SYCL_NAME"),
                          ("ggml-vulkan.h", "GGML_VK_NAME"), ("ggml-webgpu.h", "GGML_WEBGPU_NAME")):
        text = (include / header).read_text()
        defined[header] = re.findall(rf'#define\s+{macro}\s+"([^"]+)"', text)
    assert defined["ggml-cuda.h"] == ["ROCm", "MUSA", "CUDA"]  # HIP, MUSA and CUDA builds of ggml-cuda
    assert defined["ggml-sycl.h"] == ["SYCL"] and defined["ggml-vulkan.h"] == ["Vulkan"]
    assert defined["ggml-webgpu.h"] == ["WebGPU"]
    for names in defined.values():
        assert set(names) <= set(GGML_GPU_BACKENDS)


@pytest.mark.parametrize("registry, word", list(GGML_GPU_BACKENDS.items()))
def test_every_ggml_gpu_backend_by_name(registry, word):
    """A build with that backend and two devices, as system_info reports it: the user's
    word (and ggml's own name, in any case), with or without an index, gives the engine
    ggml's name in lower case ("mtl:1"), which is what its pick_device matches."""
    two = {"backends": [registry, "CPU"],
           "devices": [gpu(f"{registry}0", registry, "first"), gpu(f"{registry}1", registry, "second"), CPU_DEV]}
    engine = registry.lower()
    for asked, want in ((word, 0), (f"{word}:1", 1), (word.upper() + ":0", 0), (registry, 0), (f"{registry}:1", 1),
                        (f"{registry.lower()}:1", 1), ("auto", 0), ("gpu:1", 1)):
        assert dev.select_device(asked, two) == f"{engine}:{want}", asked
    assert [g["kind"] for g in dev.gpu_devices(two)] == [word, word]
    label = dev.BACKENDS[word].label
    with pytest.raises(DeviceError, match=rf"'{word}:2' does not exist.*2 {re.escape(label)} device"):
        dev.select_device(f"{word}:2", two)
    # compiled in, but no device (no driver): says so, not "unknown"
    with pytest.raises(DeviceError, match=rf"this build has {re.escape(label)}, but it sees no"):
        dev.select_device(word, {"backends": [registry, "CPU"], "devices": [CPU_DEV]})
    # not in this build: names the backend and how to get it
    with pytest.raises(DeviceError, match=rf"{re.escape(label)} is not available in this build \(backends: CPU\)"):
        dev.select_device(word, CPU_ONLY)


def test_metal_on_this_build_says_metal_is_not_in_it(tiny_gguf_f32):
    """On a machine without Metal, device="metal" is a known device that this build lacks."""
    if dev.BACKENDS["metal"].registry in pylfm.system_info()["backends"]:
        pytest.skip("this build has Metal")
    for word in ("metal", "METAL:0", "mtl"):
        with pytest.raises(DeviceError) as e:
            pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device=word)
        assert "Metal is not available in this build" in str(e.value) and "unknown" not in str(e.value), e.value
        assert "Apple Silicon" in str(e.value)


def test_installed_build_matches_its_system_info():
    info = pylfm.system_info()
    gpus = dev.gpu_devices(info)
    assert dev.select_device("auto") == (gpus[0]["engine"] if gpus else "cpu")
    if not any(g["kind"] == "cuda" for g in gpus):
        with pytest.raises(DeviceError):
            dev.select_device("cuda")


def test_missing_driver_is_explained():
    # what the loader says when a CUDA build is imported on a machine without the driver
    e = ImportError("libcuda.so.1: cannot open shared object file: No such file or directory")
    msg = str(dev.explain_import_error(e))
    assert msg.startswith("libcuda.so.1") and "NVIDIA driver" in msg and "CPU build" in msg
    assert "CUDA runtime" in str(dev.explain_import_error(ImportError("libcudart.so.13: cannot open")))
    other = ImportError("No module named 'x'")
    assert dev.explain_import_error(other) is other


# ---------------------------------------------------------------------------- defaults
def test_defaults_follow_the_device():
    cpu = dev.resolve_defaults("auto", info=CPU_ONLY)
    assert cpu == ("cpu", dev.physical_cores(), dev.CPU_BATCH_SIZE, False)
    g = dev.resolve_defaults("cuda:1", info=TWO_CUDA)
    assert g == ("cuda:1", dev.physical_cores(), dev.GPU_BATCH_SIZE, True) and g.on_gpu
    assert dev.GPU_BATCH_SIZE > dev.CPU_BATCH_SIZE
    # what the user sets wins
    assert dev.resolve_defaults("cuda", 3, 2, False, info=TWO_CUDA) == ("cuda:0", 3, 2, False)
    assert dev.resolve_defaults("cpu", None, None, True, info=CPU_ONLY).flash_attn is True
    assert dev.resolve_defaults("cpu", 0, info=CPU_ONLY).n_threads == dev.physical_cores()  # 0: the default


@pytest.mark.parametrize("kwargs", [dict(n_threads=-1), dict(batch_size=0), dict(batch_size=True),
                                    dict(n_threads=2.5), dict(flash_attn="yes")])
def test_defaults_reject_bad_values(kwargs):
    with pytest.raises(ValueError):
        dev.resolve_defaults("cpu", info=CPU_ONLY, **kwargs)


def _fake_sysfs(root, siblings):
    for cpu, group in enumerate(siblings):
        topo = root / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "thread_siblings_list").write_text(group + "\n")


@pytest.fixture
def three_cores_six_threads(tmp_path, monkeypatch):
    """This process sees 6 logical CPUs on 3 physical cores (two hyper-threads each), so a
    thread count taken from logical CPUs (6), or a constant, cannot pass for the default (3)."""
    _fake_sysfs(tmp_path, ["0,3", "1,4", "2,5", "0,3", "1,4", "2,5"])
    monkeypatch.setattr(dev, "SYSFS_CPU", tmp_path)
    monkeypatch.setattr(dev, "available_cpus_set", lambda: [0, 1, 2, 3, 4, 5])
    monkeypatch.setattr(dev.sys, "platform", "linux")
    assert (dev.physical_cores(), dev.available_cpus()) == (3, 6)
    return 3


def test_model_uses_the_device_defaults(tiny_gguf_f32, test_device, three_cores_six_threads):
    """Model(n_threads=None, batch_size=None, flash_attn=None, sessions=None): the device's
    defaults; on the CPU 3 threads (the physical cores), 4 slots, no flash attention; on a
    GPU 32 slots and flash attention. Explicit values are used as given."""
    want = dev.resolve_defaults(test_device)
    assert want.n_threads == three_cores_six_threads
    with pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device=test_device) as m:
        assert (m.n_threads, m.batch_size, m.flash_attn) == (want.n_threads, want.batch_size, want.flash_attn)
        gpu_run = want.on_gpu
        assert (m.batch_size, m.flash_attn, m.sessions) == ((dev.GPU_BATCH_SIZE, True, dev.GPU_SESSIONS) if gpu_run
                                                            else (dev.CPU_BATCH_SIZE, False, dev.CPU_SESSIONS))
        assert m.transcribe(chirp(), sample_rate=RATE, max_new_tokens=2).n_tokens > 0
    with pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device=test_device, n_threads=1,
                     batch_size=2, flash_attn=not want.flash_attn, sessions=1) as m:
        assert (m.n_threads, m.batch_size, m.flash_attn, m.sessions) == (1, 2, not want.flash_attn, 1)
        assert m.transcribe(chirp(), sample_rate=RATE, max_new_tokens=2).n_tokens > 0


def test_the_command_line_leaves_the_defaults_to_the_device(tiny_gguf_f32, three_cores_six_threads):
    """Every command that loads a model leaves --threads and --batch-size unset (None), so
    the Model picks the device's defaults; the server leaves one physical core to the HTTP
    side (decoding, speech detection)."""
    from pylfm.cli import build_parser
    from pylfm.cli.options import load_model

    model = ["--model", str(tiny_gguf_f32.model_path), "--mmproj", str(tiny_gguf_f32.mmproj_path)]
    for argv in (["transcribe", "a.wav"], ["speak", "Hi"], ["chat", "a.wav"], ["bench"], ["serve"],
                 ["corpus", "a.wav", "--out", "o"]):
        args = build_parser(argv).parse_args(argv + model)
        assert (args.threads, args.batch_size, args.device) == (None, None, "auto" if argv[0] != "corpus" else None)
    argv = ["transcribe", "a.wav", *model, "--device", "cpu"]
    with load_model(build_parser(argv).parse_args(argv)) as m:
        assert (m.n_threads, m.batch_size, m.flash_attn) == (3, dev.CPU_BATCH_SIZE, False)
    from pylfm.cli.serve import engine_threads

    assert engine_threads(None) == 2 and engine_threads(5) == 5


def test_physical_cores_counts_cores_not_threads(tmp_path, monkeypatch):
    # 4 logical CPUs on 2 cores with two hyper-threads each
    _fake_sysfs(tmp_path, ["0,2", "1,3", "0,2", "1,3"])
    monkeypatch.setattr(dev, "available_cpus_set", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(dev.sys, "platform", "linux")
    assert dev.physical_cores(tmp_path) == 2
    # a process pinned to both threads of one core has one core
    monkeypatch.setattr(dev, "available_cpus_set", lambda: [0, 2])
    assert dev.physical_cores(tmp_path) == 1


def test_physical_cores_on_this_machine():
    n = dev.physical_cores()
    assert 1 <= n <= dev.available_cpus()


# ---------------------------------------------------------------------------- placement
@pytest.fixture(scope="module")
def wide_gguf(tiny_tool, tmp_path_factory):
    """The tiny checkpoint with a 128-wide language model instead of 64: ggml-cuda runs
    SSM_CONV only on a multiple of 128 channels (the real model has 2048, the encoder 512),
    so on a GPU the 64-wide tiny model's short convs would fall back to the CPU."""
    from pylfm.files.convert import convert

    dims = dict(tiny_tool.TINY, hidden=128)
    saved = dict(tiny_tool.TINY)
    tiny_tool.TINY.update(dims)
    try:
        ckpt = tiny_tool.make_checkpoint(tmp_path_factory.mktemp("wide") / "tiny-wide", seed=0)
    finally:
        tiny_tool.TINY.clear()
        tiny_tool.TINY.update(saved)
    assert tiny_tool.TINY["hidden"] == 64
    g = convert(ckpt, outdir=tmp_path_factory.mktemp("wide-gguf"), outtype="f32", progress=False)
    from pylfm.files.inspect import check_gguf

    assert check_gguf(g.model_path)["n_embd"] == 128
    return g


def _placement_model(gguf, device, monkeypatch):
    monkeypatch.setenv("PYLFM_RECORD_PLACEMENT", "1")  # read when the engine is created
    return pylfm.Model(gguf.model_path, gguf.mmproj_path, device=device, n_threads=2, batch_size=2)


def _run_all_phases(m):
    m._engine.clear_placement()
    m.encode_audio(chirp(), sample_rate=RATE)
    encode_only = m._engine.placement()
    m._engine.clear_placement()
    r = m.transcribe(chirp(), sample_rate=RATE, max_new_tokens=6, ignore_eos=True)
    assert len(r.tokens) == 6
    return encode_only, m._engine.placement()


def _table(placement):
    return "\n".join(f"  {phase:8s} {op:12s} {where}" for phase, ops in sorted(placement.items())
                     for op, where in sorted(ops.items()))


def test_placement_off_by_default(tiny_gguf_f32, monkeypatch):
    monkeypatch.delenv("PYLFM_RECORD_PLACEMENT", raising=False)
    m = pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device="cpu", n_threads=2)
    m.transcribe(chirp(1.0), sample_rate=RATE, max_new_tokens=2)
    assert m._engine.placement() == {}
    m.close()


def test_placement_on_cpu_is_all_cpu(wide_gguf, monkeypatch, test_device):
    if test_device != "cpu":
        pytest.skip("the CPU placement test runs with --device cpu")
    m = _placement_model(wide_gguf, "cpu", monkeypatch)
    encode_only, run = _run_all_phases(m)
    assert set(encode_only) == {"encode"}, _table(encode_only)
    assert set(run) == {"encode", "prefill", "decode"}, _table(run)
    # the conformer's kernel-9 depthwise conv and the LFM2 short convs are SSM_CONV nodes
    assert "SSM_CONV" in run["encode"] and "SSM_CONV" in run["prefill"] and "SSM_CONV" in run["decode"]
    assert "MUL_MAT" in run["decode"]
    buffers = {b for ops in run.values() for where in ops.values() for b in where}
    assert buffers == {"CPU"}, _table(run)
    m.close()


# Ops llama.cpp computes on the CPU by design even when every layer is on the GPU: the
# token-embedding table is an input layer kept in host memory, so its lookup (GET_ROWS)
# runs there for small batches. Everything else must be on the GPU.
HOST_OPS = {"prefill": {"GET_ROWS"}, "decode": {"GET_ROWS"}, "encode": set()}


@pytest.mark.gpu
def test_placement_on_gpu(wide_gguf, monkeypatch, test_device):
    m = _placement_model(wide_gguf, test_device, monkeypatch)
    encode_only, run = _run_all_phases(m)
    print(f"placement on {m.device}:\n{_table(run)}")
    assert set(run) == {"encode", "prefill", "decode"}, _table(run)
    off_gpu = sorted((phase, op, b) for phase, ops in run.items() for op, where in ops.items() for b in where
                     if (b == "CPU" or b.endswith("_Host")) and op not in HOST_OPS[phase])
    assert not off_gpu, f"ops that ran on the CPU instead of {m.device}: {sorted(off_gpu)}\n{_table(run)}"
    for phase, op in [("encode", "SSM_CONV"), ("encode", "MUL_MAT"), ("prefill", "MUL_MAT"),
                      ("prefill", "SSM_CONV"), ("decode", "MUL_MAT"), ("decode", "SSM_CONV")]:
        assert run[phase].get(op), f"no {op} in {phase}:\n{_table(run)}"
    m.close()
