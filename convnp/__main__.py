"""``python -m convnp ...`` is the ``convnp`` command."""

from .app.cli import main

raise SystemExit(main())
