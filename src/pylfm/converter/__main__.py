"""``python -m pylfm.converter ...`` is ``pylfm convert ...``."""

import sys

from ..cli import main

sys.exit(main(["convert", *sys.argv[1:]]))
