"""`python -m tritonfleet.loadtest.fleet_chaos`."""

import sys

from tritonfleet.loadtest.fleet_chaos.study import main

if __name__ == "__main__":
    sys.exit(main())
