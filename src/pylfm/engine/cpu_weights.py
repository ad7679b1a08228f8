"""Where a model's weights live on the CPU: the policy, and what this machine has.

llama.cpp can keep weights in ggml-cpu's "extra" buffer types: CPU_REPACK (Q4_0 and
others re-laid out for faster matrix products) and, on Intel Xeons with AMX-INT8, AMX,
whose matrix product crashes the process at llama.cpp's pinned commit (llama.cpp
#20824). pylfm decides at load (the logic is in ``src/native/cpu_weights.h``):

- ``auto`` (default): never AMX. Without an AMX buffer type, llama.cpp's own placement;
  with one, extra buffer types off and each matrix weight that CPU_REPACK runs sent
  there explicitly (mode ``no-amx``).
- ``on``: llama.cpp's own placement, AMX included (for machines where it works).
- ``off``: plain weights, no repacking.
- ``no-amx``: what ``auto`` does on AMX machines, on any machine.

Chosen with ``Model(cpu_repack=...)``, else ``$PYLFM_CPU_REPACK``, else ``auto``.
``model.cpu_weights`` says what was done, ``pylfm.system_info()["cpu"]`` (and ``pylfm
info``) what the CPU has and what ``auto`` does on it.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

ENV = "PYLFM_CPU_REPACK"
POLICIES = ("auto", "on", "off", "no-amx")


def resolve_policy(value: Optional[str] = None) -> str:
    """The policy for a load: ``value``, else ``$PYLFM_CPU_REPACK``, else "auto".
    ValueError naming the choices for anything else."""
    source = "cpu_repack"
    if value is None:
        value, source = os.environ.get(ENV, ""), ENV
    if not isinstance(value, str):
        raise ValueError(f"cpu_repack must be one of {', '.join(POLICIES)} (or None), got {value!r}")
    policy = value.strip().lower() or "auto"
    if policy not in POLICIES:
        raise ValueError(f"{source}={value!r} is not a CPU weight placement; use one of {', '.join(POLICIES)}")
    return policy


def cpu_info(policy: Optional[str] = None) -> Dict[str, Any]:
    """This machine's CPU backend and what the policy does on it: ``description``,
    ``features`` (AVX2, AMX_INT8, ...), ``extra_bufts`` (CPU_REPACK, AMX, ...), ``amx``,
    ``library`` (the ggml-cpu file in use: a portable build's variant), ``policy``,
    ``mode`` (what a CPU load does under it: on / off / no-amx) and ``reason``."""
    from .. import _core

    facts = dict(_core.cpu_facts())
    try:
        facts["policy"] = resolve_policy(policy)
    except ValueError as e:  # a bad environment variable must not break `pylfm info`
        facts.update(policy=None, mode=None, reason=str(e))
        return facts
    plan = _core.plan_cpu_weights(facts["policy"], facts["features"], facts["extra_bufts"], [], False)
    facts.update(mode=plan["mode"], reason=plan["reason"])
    return facts


def describe(cpu_weights: Dict[str, Any]) -> str:
    """One line for the log: policy -> mode (reason); buffers."""
    line = f"policy {cpu_weights['policy']} -> {cpu_weights['mode']} ({cpu_weights['reason']})"
    buffers = cpu_weights.get("buffers_mib") or {}
    if buffers:
        line += "; weight buffers: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in sorted(buffers.items()))
    return line
