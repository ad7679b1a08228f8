"""Where weights live on the CPU (issue 21): never in a buffer type that crashes.

The decision (`_core.plan_cpu_weights`) is a pure function of CPU facts, so the AMX
machines' case is tested on every machine with an AMX Xeon's facts. The real engine then
loads tiny Q4_0 / Q8_0 models under every policy on this machine: the same tokens, and
weights where the policy says (read from llama.cpp's own "model buffer size" report).
The "no-amx" policy runs on any CPU the exact path that "auto" takes on an AMX machine.
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest

import pylfm
from pylfm import _core, cli
from pylfm.engine.cpu_weights import POLICIES, resolve_policy

# ---------------------------------------------------------------------- facts of machines
SAPPHIRE_RAPIDS = ["SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI",
                   "AVX512_BF16", "AMX_INT8", "LLAMAFILE", "OPENMP", "REPACK"]
EPYC = [f for f in SAPPHIRE_RAPIDS if f != "AMX_INT8"]
ARM = ["NEON", "ARM_FMA", "DOTPROD", "MATMUL_INT8", "KLEIDIAI", "REPACK"]


def lfm2_weights(qtype: str, n_layer: int = 4, amx: bool = True, tied: bool = True):
    """The per-tensor answers an LFM2 backbone's GGUF gets: every 2-D quantized matrix is run by
    AMX (when present) and, for Q4_0 on x86, by CPU_REPACK; f32 norms and the conv kernel by none."""
    runs = (["AMX"] if amx else []) + (["CPU_REPACK"] if qtype == "q4_0" else [])
    w = [("token_embd.weight", qtype, runs), ("token_embd_norm.weight", "f32", [])]
    if not tied:
        w.append(("output.weight", qtype, runs))
    for i in range(n_layer):
        p = f"blk.{i}."
        w += [(p + "attn_norm.weight", "f32", []), (p + "ffn_norm.weight", "f32", [])]
        w += [(p + n, qtype, runs) for n in ("ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")]
        if i % 2:
            w += [(p + "attn_q_norm.weight", "f32", []), (p + "attn_k_norm.weight", "f32", [])]
            w += [(p + n, qtype, runs) for n in ("attn_q.weight", "attn_k.weight", "attn_v.weight",
                                                 "attn_output.weight")]
        else:
            w += [(p + "shortconv.conv.weight", "f32", [])]
            w += [(p + n, qtype, runs) for n in ("shortconv.in_proj.weight", "shortconv.out_proj.weight")]
    return w


def overridden(plan, names):
    """{name: buffer type} for the names the plan's override patterns match (first match wins,
    as in llama.cpp). Python's re reads these anchored patterns as std::regex does."""
    out = {}
    for name in names:
        for pattern, buft in plan["overrides"]:
            if re.search(pattern, name):
                out[name] = buft
                break
    return out


# ---------------------------------------------------------------------- the decision
def test_auto_on_an_amx_xeon_sends_only_what_cpu_repack_runs_there():
    weights = lfm2_weights("q4_0")
    plan = _core.plan_cpu_weights("auto", SAPPHIRE_RAPIDS, ["AMX", "CPU_REPACK"], weights)
    assert plan["mode"] == "no-amx" and plan["use_extra_bufts"] is False
    assert "AMX" in plan["reason"]
    names = [n for n, _, _ in weights]
    got = overridden(plan, names)
    matmuls = {n for n, t, _ in weights if t == "q4_0" and n != "token_embd.weight"}
    assert got == {n: "CPU_REPACK" for n in matmuls}
    assert plan["repacked"] == {"CPU_REPACK": [n for n in names if n in matmuls]}
    # never: the tied LM head / input embedding (a GET_ROWS too), norms, the conv kernel
    assert "token_embd.weight" not in got and not any("norm" in n or "conv.weight" in n for n in got)
    assert all(b != "AMX" for _, b in plan["overrides"])


def test_auto_on_an_amx_xeon_forces_nothing_the_repack_type_cannot_take():
    # Q8_0 has no repacked layout on x86: forcing it into CPU_REPACK aborts at load.
    plan = _core.plan_cpu_weights("auto", SAPPHIRE_RAPIDS, ["AMX", "CPU_REPACK"], lfm2_weights("q8_0"))
    assert plan["mode"] == "no-amx" and plan["use_extra_bufts"] is False
    assert plan["overrides"] == [] and plan["repacked"] == {}
    f16 = [(n, "f16" if t != "f32" else t, ["AMX"] if t != "f32" else []) for n, t, _ in lfm2_weights("q8_0")]
    plan = _core.plan_cpu_weights("auto", SAPPHIRE_RAPIDS, ["AMX", "CPU_REPACK"], f16)
    assert plan["use_extra_bufts"] is False and plan["overrides"] == []


def test_an_untied_lm_head_is_repacked_too():
    weights = lfm2_weights("q4_0", tied=False) + [("dense_2.weight", "q4_0", ["AMX", "CPU_REPACK"]),
                                                  ("dense_2.bias", "f32", [])]
    plan = _core.plan_cpu_weights("no-amx", SAPPHIRE_RAPIDS, ["AMX", "CPU_REPACK"], weights)
    got = overridden(plan, [n for n, _, _ in weights])
    assert got["output.weight"] == got["dense_2.weight"] == "CPU_REPACK"
    assert "dense_2.bias" not in got and "token_embd.weight" not in got


@pytest.mark.parametrize("policy,features,bufts,gpu,mode,extra", [
    ("auto", EPYC, ["CPU_REPACK"], False, "on", True),            # no AMX: llama.cpp's own placement
    ("auto", ARM, ["CPU_KLEIDIAI", "CPU_REPACK"], False, "on", True),
    ("auto", SAPPHIRE_RAPIDS, [], False, "on", True),             # AMX CPU, but a build without the AMX type
    ("auto", SAPPHIRE_RAPIDS, ["AMX", "CPU_REPACK"], True, "off", False),  # GPU: layers offloaded, extras off
    ("on", SAPPHIRE_RAPIDS, ["AMX", "CPU_REPACK"], False, "on", True),
    ("off", EPYC, ["CPU_REPACK"], False, "off", False),
    ("off", SAPPHIRE_RAPIDS, ["AMX", "CPU_REPACK"], False, "off", False),
    ("no-amx", EPYC, ["CPU_REPACK"], False, "no-amx", False),
    ("no-amx", EPYC, ["CPU_REPACK"], True, "off", False),
])
def test_policy_table(policy, features, bufts, gpu, mode, extra):
    weights = lfm2_weights("q4_0", amx="AMX" in bufts)
    plan = _core.plan_cpu_weights(policy, features, bufts, weights, gpu)
    assert (plan["policy"], plan["mode"], plan["use_extra_bufts"]) == (policy, mode, extra)
    if mode != "no-amx":
        assert plan["overrides"] == []  # llama.cpp's placement, or plain: nothing forced
    else:
        assert set(b for _, b in plan["overrides"]) == {"CPU_REPACK"}


def test_only_buffer_types_the_machine_has_and_never_amx():
    weights = [("blk.0.ffn_up.weight", "q4_0", ["AMX"]),                # only AMX runs it: stays plain
               ("blk.0.ffn_down.weight", "q4_0", ["CPU_KLEIDIAI"]),     # a type this machine lacks
               ("blk.0.ffn_gate.weight", "q4_0", ["AMX", "CPU_REPACK"])]
    plan = _core.plan_cpu_weights("no-amx", SAPPHIRE_RAPIDS, ["AMX", "CPU_REPACK"], weights)
    assert plan["repacked"] == {"CPU_REPACK": ["blk.0.ffn_gate.weight"]}
    assert overridden(plan, [n for n, _, _ in weights]) == {"blk.0.ffn_gate.weight": "CPU_REPACK"}


def test_policy_values(monkeypatch):
    assert _core.CPU_REPACK_POLICIES == POLICIES == ("auto", "on", "off", "no-amx")
    monkeypatch.delenv("PYLFM_CPU_REPACK", raising=False)
    assert resolve_policy() == "auto" == _core.normalize_cpu_repack("")
    assert resolve_policy(" OFF ") == "off" == _core.normalize_cpu_repack(" OFF ")
    monkeypatch.setenv("PYLFM_CPU_REPACK", "No-AMX")
    assert resolve_policy() == "no-amx" == _core.normalize_cpu_repack("")
    assert resolve_policy("on") == "on"  # the keyword wins over the environment
    monkeypatch.setenv("PYLFM_CPU_REPACK", "fast")
    with pytest.raises(ValueError, match="PYLFM_CPU_REPACK"):
        resolve_policy()
    with pytest.raises(ValueError, match="auto, on, off, no-amx"):
        _core.normalize_cpu_repack("")
    with pytest.raises(ValueError, match="cpu_repack"):
        resolve_policy("amx")
    with pytest.raises(ValueError):
        _core.plan_cpu_weights("sometimes", EPYC, ["CPU_REPACK"], [])


def test_a_bad_policy_fails_before_loading(tiny_gguf_f32, monkeypatch):
    with pytest.raises(ValueError, match="cpu_repack"):
        pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device="cpu", cpu_repack="fastest")
    monkeypatch.setenv("PYLFM_CPU_REPACK", "yes")
    with pytest.raises(ValueError, match="PYLFM_CPU_REPACK"):
        pylfm.Model(tiny_gguf_f32.model_path, tiny_gguf_f32.mmproj_path, device="cpu")


# ---------------------------------------------------------------------- this machine
def test_system_info_and_pylfm_info_show_the_cpu_and_the_policy(capsys, monkeypatch):
    monkeypatch.delenv("PYLFM_CPU_REPACK", raising=False)
    cpu = pylfm.system_info()["cpu"]
    facts = _core.cpu_facts()
    assert cpu["extra_bufts"] == facts["extra_bufts"] and cpu["features"] == facts["features"]
    assert cpu["policy"] == "auto"
    assert cpu["mode"] == ("no-amx" if "AMX" in cpu["extra_bufts"] else "on")
    assert cpu["amx"] == ("AMX" in cpu["extra_bufts"] or "AMX_INT8" in cpu["features"])
    assert cpu["library"] and "ggml-cpu" in cpu["library"]  # the CPU backend in use (a portable build: its variant)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"cpu weights: auto -> {cpu['mode']}" in out and "AMX: " in out
    monkeypatch.setenv("PYLFM_CPU_REPACK", "off")
    assert cli.main(["info", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["cpu"]
    assert (shown["policy"], shown["mode"]) == ("off", "off")
    monkeypatch.setenv("PYLFM_CPU_REPACK", "fastest")  # pylfm info still answers, and names the mistake
    assert cli.main(["info"]) == 0
    assert "cpu weights: PYLFM_CPU_REPACK='fastest' is not a CPU weight placement" in capsys.readouterr().out


def test_per_tensor_answers_of_a_real_gguf(tiny_gguf_f32, tiny_gguf_q8):
    bufts = _core.cpu_facts()["extra_bufts"]
    for path in (tiny_gguf_f32.model_path, tiny_gguf_q8.model_path):
        facts = _core.cpu_weight_facts(str(path))
        assert len(facts) > 20
        for name, qtype, runs in facts:
            assert set(runs) <= set(bufts)
            if qtype == "f32":
                assert "CPU_REPACK" not in runs, name  # no repacked layout for f32


def test_speech_matrices_follow_the_mode():
    for t in ("q4_0", "q8_0", "f16", "f32"):
        assert _core.cpu_matrix_buft("off", t, 512, 1024) is None
        assert _core.cpu_matrix_buft("no-amx", t, 512, 1024) != "AMX"
    if "CPU_REPACK" in _core.cpu_facts()["extra_bufts"] and "AVX2" in _core.cpu_facts()["features"]:
        assert _core.cpu_matrix_buft("no-amx", "q4_0", 512, 1024) == "CPU_REPACK"
        assert _core.cpu_matrix_buft("no-amx", "q4_0", 512, 1282) is None  # Q4_0 repacks 8 rows at a time
    if "AMX" not in _core.cpu_facts()["extra_bufts"]:
        for t in ("q4_0", "q8_0", "f32"):
            assert _core.cpu_matrix_buft("on", t, 512, 1024) == _core.cpu_matrix_buft("no-amx", t, 512, 1024)


# ---------------------------------------------------------------------- the real engine
def _safe_policies() -> tuple:
    """The policies this machine can run: all of them, but "on" where the CPU has the AMX
    buffer type (llama.cpp's AMX matrix product kills the process there, which is the
    reason for the policy; the decision tests above cover that case with an AMX Xeon's facts)."""
    amx = "AMX" in _core.cpu_facts()["extra_bufts"]
    return tuple(p for p in POLICIES if not (amx and p == "on"))


def _chirp(seconds=3.0):
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * (200 * t + 266 * t * t))).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_q4(tiny_gguf_f32, tmp_path_factory):
    return pylfm.quantize(tiny_gguf_f32.model_path, tmp_path_factory.mktemp("q4") / "tiny-Q4_0.gguf", "Q4_0")


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0"])
def test_every_policy_loads_and_transcribes_the_same_tokens(qtype, tiny_q4, tiny_gguf_q8, tiny_gguf_f32, caplog):
    path = tiny_q4 if qtype == "Q4_0" else tiny_gguf_q8.model_path
    bufts = _core.cpu_facts()["extra_bufts"]
    facts = _core.cpu_weight_facts(str(path))
    by_hand = {n for n, _, runs in facts if any(b != "AMX" for b in runs) and n != "token_embd.weight"
               and n.startswith("blk.")}
    tokens, placed = {}, {}
    for policy in _safe_policies():
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="pylfm"):
            m = pylfm.Model(path, tiny_gguf_f32.mmproj_path, device="cpu", n_threads=2, batch_size=1,
                            cpu_repack=policy)
            try:
                r = m.transcribe(_chirp(), sample_rate=16000, max_new_tokens=24, ignore_eos=True)
            finally:
                m.close()
        w = m.cpu_weights
        tokens[policy], placed[policy] = list(r.tokens), w["buffers_mib"]
        assert w["policy"] == policy and len(r.tokens) == 24
        assert "AMX" not in placed[policy] or policy == "on"  # AMX only when asked for
        # llama.cpp's own report of its weight buffers reaches logging, and agrees with cpu_weights
        reported = {m_.group(1) for rec in caplog.records if rec.name == "pylfm.llama"
                    for m_ in [re.search(r"(\S+) model buffer size", rec.getMessage())] if m_}
        assert reported == set(placed[policy])
        assert any(rec.name == "pylfm" and rec.getMessage().startswith(f"CPU weights: policy {policy} -> ")
                   for rec in caplog.records)
    assert len({tuple(t) for t in tokens.values()}) == 1  # every policy, the same greedy tokens
    assert "CPU_REPACK" not in placed["off"]
    # no-amx: exactly the weights CPU_REPACK runs went there (Q4_0 on x86; none for Q8_0 on x86)
    assert ("CPU_REPACK" in placed["no-amx"]) == (bool(by_hand) and "CPU_REPACK" in bufts)
    if "AMX" not in bufts:
        assert placed["auto"] == placed["on"]  # auto is llama.cpp's own placement here
    if qtype == "Q4_0" and "CPU_REPACK" in bufts and "AVX2" in _core.cpu_facts()["features"]:
        # x86 with AVX2: Q4_0 is repacked under every policy but "off" (measured)
        assert all("CPU_REPACK" in placed[p] for p in placed if p != "off")


def test_the_environment_variable_reaches_the_model(tiny_q4, tiny_gguf_f32, monkeypatch):
    monkeypatch.setenv("PYLFM_CPU_REPACK", "off")
    m = pylfm.Model(tiny_q4, tiny_gguf_f32.mmproj_path, device="cpu", n_threads=2, batch_size=1)
    try:
        assert (m.cpu_weights["policy"], m.cpu_weights["mode"], m.cpu_weights["use_extra_bufts"]) == ("off", "off", False)
        assert "CPU_REPACK" not in m.cpu_weights["buffers_mib"]
    finally:
        m.close()


def test_speech_output_under_every_policy(tiny_checkpoint, tmp_path_factory, caplog):
    """The detokenizer (a libllama model of its own) and the depthformer's matrices follow
    the policy too; the audio they make does not depend on where the weights live."""
    from pylfm.files.convert import convert

    r = convert(tiny_checkpoint, outdir=tmp_path_factory.mktemp("speech-q4"), outtype="f32", speech_outtype="q4_0",
                progress=False)
    codes = np.zeros((4, 8), dtype=np.int32) + np.arange(8, dtype=np.int32) * 7
    cpu = _core.cpu_facts()
    repacks_q4 = "CPU_REPACK" in cpu["extra_bufts"] and "AVX2" in cpu["features"]
    out = {}
    for policy in _safe_policies():
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="pylfm"):
            m = pylfm.Model(r.model_path, r.mmproj_path, device="cpu", n_threads=2, batch_size=1, cpu_repack=policy)
            try:
                m.speech_runtime.load()
                out[policy] = m.speech_runtime.detokenize(codes)
                frames = m.speak("Hello there.", temperature=0, max_duration=0.4).codes
                assert len(frames) >= 1
            finally:
                m.close()
        notes = [rec.getMessage() for rec in caplog.records if "pylfm: CPU weights of tokenizer-" in rec.getMessage()]
        assert len(notes) == 1 and f"policy {policy} -> " in notes[0], notes
        assert "AMX " not in notes[0].split("buffers:")[-1] or policy == "on"
        if repacks_q4:  # the detokenizer's Q4_0 matrices (rows of 8) are repacked unless "off"
            assert ("CPU_REPACK" in notes[0].split("buffers:")[-1]) == (policy != "off"), notes[0]
    for policy in _safe_policies():
        np.testing.assert_allclose(out[policy], out["off"], rtol=0, atol=2e-2 * np.abs(out["off"]).max())
