"""`python -m largeloss ...` is `python main.py ...`."""
from largeloss.cli import main

raise SystemExit(main())
