"""``pylfm info``: the compiled-in backends, the devices they see, and where weights live
on the CPU (AMX or not)."""

from __future__ import annotations

import argparse
import json

from .options import JSON


def add_arguments(p: argparse.ArgumentParser) -> None:
    JSON.add(p)


def main(args: argparse.Namespace) -> int:
    from ..engine.device import system_info

    info = system_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("backends: " + ", ".join(info["backends"]))
    for d in info["devices"]:
        print(f"device:   {d['name']} ({d['type']}, {d['backend']}): {d['description']}")
    print("gpu offload: " + ("yes" if info["gpu_offload"] else "no"))
    cpu = info["cpu"]
    print(f"cpu:      {cpu['description']}, AMX: {'yes' if cpu['amx'] else 'no'}, extra buffer types: "
          f"{', '.join(cpu['extra_bufts']) or 'none'} ({cpu['library'] or 'linked in'})")
    if cpu["policy"] is None:  # a bad PYLFM_CPU_REPACK: say so (a model load would refuse it)
        print(f"cpu weights: {cpu['reason']}")
    else:
        print(f"cpu weights: {cpu['policy']} -> {cpu['mode']}: {cpu['reason']} (PYLFM_CPU_REPACK=auto|on|off|no-amx)")
    print(info["llama_system_info"])
    return 0
