"""`python -m tritonfleet.loadtest.tune`."""

import sys

from tritonfleet.loadtest.tune.cli import main

if __name__ == "__main__":
    sys.exit(main())
