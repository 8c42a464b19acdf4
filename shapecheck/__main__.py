"""`python -m shapecheck`: the same as the `shapecheck` command."""

import sys

from .cli import main

sys.exit(main())
