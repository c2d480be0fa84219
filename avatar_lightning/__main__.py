"""``python -m avatar_lightning COMMAND``: see :mod:`avatar_lightning.cli`."""

import sys

from avatar_lightning.cli import main

if __name__ == "__main__":
    sys.exit(main())
