"""``python -m fastsocks.bench``: the same as ``fastsocks bench`` (and the child a local target runs in)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
