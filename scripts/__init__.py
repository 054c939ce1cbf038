"""Scripts of the project (run them as `python scripts/NAME.py`); importable as scripts.NAME."""
