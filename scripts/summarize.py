"""Summarise a tree of run folders into the paper's table: test mAP mean ± std over seeds.

    python scripts/summarize.py runs/repro
    python scripts/summarize.py runs/sweep --out table.md --csv table.csv

The code is largeloss/reporting/summarize.py; see its docstring."""
from largeloss.reporting.summarize import main

if __name__ == "__main__":
    raise SystemExit(main())
