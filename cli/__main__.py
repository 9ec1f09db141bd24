"""`python -m tritonfleet.cli ...`: the `tritonfleet` console script without the script."""

import sys

from tritonfleet.cli import main

if __name__ == "__main__":
    sys.exit(main())
