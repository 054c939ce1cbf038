"""Plot the per-epoch curves of one or more runs, overlaid.

    python scripts/plot_curves.py runs/repro/coco/end_to_end/an/seed0 \
        runs/repro/coco/end_to_end/LL-Ct/seed0 --out curves.png --labels AN LL-Ct

The code is largeloss/reporting/plot_curves.py; see its docstring."""
from largeloss.reporting.plot_curves import main

if __name__ == "__main__":
    raise SystemExit(main())
