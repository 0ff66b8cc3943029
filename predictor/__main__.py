"""`python -m predictor`: the command line."""

from predictor.serving.cli import main

raise SystemExit(main())
