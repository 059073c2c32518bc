"""``python -m dkclient`` runs the ``dk`` command line."""

import sys

from dkclient.cli import main

if __name__ == "__main__":
    sys.exit(main())
