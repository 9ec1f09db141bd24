"""`python -m client ...` (see client/cli.py)."""

import sys

from tritonfleet.client.cli import main

if __name__ == "__main__":
    sys.exit(main())
