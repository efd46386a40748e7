"""`python -m fitloop ...` runs the command line (see `fitloop.cli`)."""

import sys

from .cli import main

sys.exit(main())
