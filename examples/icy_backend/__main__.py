"""``python -m examples.icy_backend`` (what ``make demo`` runs): see the package docstring."""

from __future__ import annotations

from .app import main

raise SystemExit(main())
