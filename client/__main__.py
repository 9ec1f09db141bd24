"""`python -m client ...` (see client/cli.py): deprecated, use `tritonfleet embed|embed-fasta|health`."""

import sys

from tritonfleet.client.cli import main
from tritonfleet.contract.command_line import warn_python_m

if __name__ == "__main__":
    warn_python_m(__spec__.name if __spec__ else None, "embed|embed-fasta|health")
    sys.exit(main())
