#!/usr/bin/env bash
# Builds the documentation site strictly: a broken link or anchor, or an API reference to a
# name that no longer exists, fails the build. Installs the `docs` extra's pinned packages
# into the active Python environment first (read from pyproject.toml; pylfm itself is not
# built: mkdocstrings reads the sources), then runs mkdocs (docs/development.md).
#   bash tools/docs.sh            # mkdocs build --strict -> site/
#   bash tools/docs.sh serve      # the same pages, served with live reload on 127.0.0.1:8000
# Further arguments go to mkdocs (bash tools/docs.sh build -d /tmp/site).
set -euo pipefail
cd "$(dirname "$0")/.."
command=${1:-build}
[ $# -gt 0 ] && shift
case "$command" in
    build|serve) ;;
    *) echo "usage: bash tools/docs.sh [build|serve] [mkdocs options]" >&2; exit 2 ;;
esac

requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
python - "$requirements" <<'PY'
import sys
import tomllib  # the docs extra's packages need Python >= 3.11 anyway
with open("pyproject.toml", "rb") as f:
    docs = tomllib.load(f)["project"]["optional-dependencies"]["docs"]
with open(sys.argv[1], "w") as out:
    out.write("\n".join(docs) + "\n")
PY
python -m pip install --quiet --disable-pip-version-check -r "$requirements"
rm -f "$requirements"

export NO_MKDOCS_2_WARNING=1  # Material's notice about MkDocs 2.0, printed on every build
exec python -m mkdocs "$command" --strict "$@"
