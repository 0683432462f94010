"""``python -m sora``: the same as the ``sora`` command (and what ``torchrun -m sora`` launches)."""

import sys

from .cli import main

sys.exit(main())
