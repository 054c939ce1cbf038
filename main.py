"""Entry point. Examples:

    python main.py                                    # embedded digits dataset, AN + LL-R, ~1 min on CPU
    python main.py --dataset coco --mod_scheme LL-Ct  # a cell of the LL paper, authors' defaults
    python main.py --dataset pascal --loss role       # a Cole et al. baseline
    python main.py --resume runs/X/last.pt            # continue an interrupted run
    python main.py --eval_only runs/X/best.pt         # test mAP of a saved model
    torchrun --nproc_per_node=4 main.py --dataset coco --mod_scheme LL-Ct   # 4 GPUs, global batch 16
"""
from __future__ import annotations

import os
import sys
import traceback
from contextlib import nullcontext, redirect_stdout

from config import Config, parse_args
from distributed import destroy, world_from_environment
from errors import InputError, TrainingDiverged
from run_folder import RunFolder
from train import evaluate_checkpoint, fit, resume_config


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    world = world_from_environment()  # torchrun's processes; only rank 0 prints
    with open(os.devnull, "w") as devnull:
        with nullcontext() if world.is_main else redirect_stdout(devnull):
            try:
                return run(config)
            finally:
                destroy(world)


def run(config: Config) -> int:
    """Train (or evaluate) as configured; the exit code."""
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
        RunFolder(config.out_dir).record_failure(str(error))
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        RunFolder(config.out_dir).record_failure(str(error))
        print(f"error: {error}", file=sys.stderr)
        return 3
    except BaseException:
        RunFolder(config.out_dir).record_failure(traceback.format_exc())
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
