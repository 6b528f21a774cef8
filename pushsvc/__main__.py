"""``python -m pushsvc``: the same as the ``pushsvc`` command."""

from pushsvc.cli import main

raise SystemExit(main())
