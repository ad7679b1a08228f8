"""``python -m pylfm.cli ...`` is ``pylfm ...``."""

import sys

from . import main

sys.exit(main())
