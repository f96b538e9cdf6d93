"""`python -m relaylab ...`: the same command line as `relaylab ...`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
