"""``python -m server``: see :mod:`server.cli`."""

import sys

from server.cli import main

if __name__ == "__main__":
    sys.exit(main())
