"""Real operating-system failures for tests: a full disk, a permission denied.

Nothing here fakes an error. A subprocess starts through a small launcher that sets
a file-size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, as on a full disk)
and, when running as root, drops the capabilities that let root ignore file
permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER), then execs the
command. So permission tests mean the same as root (CI often is) as for a user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence

import pytest

_LAUNCH = """
import os, sys
limit, restricted, argv = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3:]
if limit >= 0:
    import resource
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
if restricted and os.geteuid() == 0:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone after exec
            sys.exit(f"os_failures: cannot drop capability {cap}: {os.strerror(ctypes.get_errno())}")
os.execv(argv[0], argv)
"""


def pylfm_command() -> List[str]:
    """The installed ``pylfm`` console script, as users run it."""
    script = shutil.which("pylfm", path=os.path.dirname(sys.executable))
    if script is None:
        return [sys.executable, "-c", "import sys; from pylfm.cli import main; sys.exit(main())"]
    return [script]


def run(argv: Sequence[str], *, restricted: bool = False, max_file_bytes: Optional[int] = None,
        timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
    """Runs ``argv`` (text output captured). ``restricted``: file permissions apply even
    to root; ``max_file_bytes``: writes beyond that file size fail with EFBIG."""
    if restricted or max_file_bytes is not None:
        argv = [sys.executable, "-c", _LAUNCH, str(-1 if max_file_bytes is None else max_file_bytes),
                "1" if restricted else "0", *argv]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1")
    env.update(kwargs.pop("env", {}))
    if "stdout" in kwargs:  # e.g. a file: only stderr is captured
        kwargs.setdefault("stderr", subprocess.PIPE)
    else:
        kwargs["capture_output"] = True
    return subprocess.run(list(argv), text=True, timeout=timeout, env=env, **kwargs)


def python(code: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """Runs ``code`` in this interpreter (see `run` for the options)."""
    return run([sys.executable, "-c", code, *args], **kwargs)


def require_permissions(tmp: Path) -> None:
    """Skips where a restricted subprocess would still read a mode-000 file (e.g. a
    container without the capability to drop capabilities), so that a permission test
    never passes without testing anything."""
    if sys.platform == "win32":
        pytest.skip("POSIX permissions")
    probe = tmp / ".permission-probe"
    probe.write_text("secret")
    probe.chmod(0)
    try:
        p = python("import sys; open(sys.argv[1]).read()", str(probe), restricted=True)
    finally:
        probe.unlink()
    if p.returncode == 0 or "PermissionError" not in p.stderr:
        pytest.skip(f"file permissions cannot be enforced here: {p.stderr.strip()[-300:]}")
