"""The docs keep up with the code (docs/development.md): the CLI reference, docs/cli.md,
names every option of every ``pylfm`` command, and the README's links lead to files and
headings that exist. The site itself is built by ``bash tools/docs.sh`` (``mkdocs build
--strict``, in CI after the tests), which fails on a broken link inside docs/ or an API
reference to a name that no longer exists."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Set

import pytest

from pylfm.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
CLI_DOC = ROOT / "docs" / "cli.md"
EXTRA_MODULES = {"serve": "fastapi", "corpus": "ray"}  # commands whose options need an extra to be listed


def _section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"docs/cli.md has no section '## {heading}'"
    return match.group(1)


def _help_flags(command: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Set[str]:
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at hyphens: keep every flag on one line
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", capsys.readouterr().out)) - {"--help"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_reference_names_every_option(command: str, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if command in EXTRA_MODULES:
        pytest.importorskip(EXTRA_MODULES[command])
    doc = CLI_DOC.read_text()
    section = _section(doc, f"pylfm {command}")
    if "(#model-options)" in section:  # "plus the model options": the shared table counts too
        section += _section(doc, "Model options")
    flags = _help_flags(command, capsys, monkeypatch)
    assert flags, f"pylfm {command} --help lists no options"
    missing = sorted(f for f in flags if f"`{f}" not in section)
    assert not missing, f"docs/cli.md's 'pylfm {command}' section does not describe {missing}"


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug (what MkDocs links to), or an explicit {#id}."""
    explicit = re.search(r"\{#([\w-]+)\}\s*$", heading)
    if explicit:
        return explicit.group(1)
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(path: Path) -> Set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)  # no headings in code
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def test_readme_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert links
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = ROOT / target if target else ROOT / "README.md"
        assert path.exists(), f"README.md links to {link}, which does not exist"
        if anchor:
            assert anchor in _anchors(path), f"README.md links to {link}: {target} has no heading #{anchor}"
