"""``python -m lazyembed``: the same as the ``lazyembed`` script (the daemon starts this way)."""

from __future__ import annotations

import sys

from lazyembed.cli import main

sys.exit(main())
