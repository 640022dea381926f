"""``python -m vitcodec.demo``."""

from vitcodec.demo.run import main

raise SystemExit(main())
