"""Entry point. Examples:

    python main.py                                    # embedded digits dataset, AN + LL-R, ~1 min on CPU
    python main.py --dataset coco --mod_scheme LL-Ct  # a cell of the LL paper, authors' defaults
    python main.py --dataset pascal --loss role       # a Cole et al. baseline
    python main.py --resume runs/X/last.pt            # continue an interrupted run
    python main.py --eval_only runs/X/best.pt         # test mAP of a saved model
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

from config import parse_args
from datasets import InputError
from train import TrainingDiverged, evaluate_checkpoint, fit, resume_config


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    if config.eval_only:
        try:
            evaluate_checkpoint(config.eval_only, config.device, config.num_workers)
        except InputError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    try:
        if config.resume:
            config = resume_config(config.resume, config)
        fit(config)
    except InputError as error:  # bad input: a clear message, no traceback, non-zero exit
        record_failure(config.out_dir, str(error))
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        record_failure(config.out_dir, str(error))
        print(f"error: {error}", file=sys.stderr)
        return 3
    except BaseException:
        record_failure(config.out_dir, traceback.format_exc())
        raise
    return 0


def record_failure(out_dir: str, message: str) -> None:
    """error.txt in the run folder (if it exists), so sweeps and summaries see failed runs."""
    if Path(out_dir).is_dir():
        (Path(out_dir) / "error.txt").write_text(message)


if __name__ == "__main__":
    raise SystemExit(main())
