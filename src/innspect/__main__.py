"""``python -m innspect``: the same as the ``innspect`` command."""

import sys

from innspect.cli import main

if __name__ == "__main__":
    sys.exit(main())
