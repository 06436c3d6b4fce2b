"""`python -m dlarena`: the same command line as the `dlarena` script (cli.py)."""

import sys

from dlarena.cli import main

sys.exit(main())
