"""`python -m analytics_sdk ...`: the same CLI as the `analytics-sdk` command."""

from analytics_sdk._cli import main

raise SystemExit(main())
