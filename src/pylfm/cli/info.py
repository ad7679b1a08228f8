"""``pylfm info``: the compiled-in backends and the devices they see."""

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
    print(info["llama_system_info"])
    return 0
