"""``python -m dkserver.client`` runs the ``dk`` command line."""

import sys

from dkserver.client.cli import main

if __name__ == "__main__":
    sys.exit(main())
