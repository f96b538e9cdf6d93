"""`python -m relaylab ...`: the same command line as `relaylab ...`."""

import sys

from .cli import main

sys.exit(main())
