"""The command-line entry: `python main.py`, `python -m largeloss` and the `largeloss` command all
call `main(argv)` (launch examples: main.py's docstring). It parses the flags, owns the run folder,
trains or evaluates, and maps failures to exit codes: 0, 2 for bad input, 3 for a diverged run."""
from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from contextlib import ExitStack, nullcontext, redirect_stdout
from pathlib import Path

from largeloss.engine.resume import resume_config
from largeloss.engine.run_folder import RunFolder, read_checkpoint
from largeloss.engine.sweep import fit_sweep
from largeloss.engine.train import evaluate_checkpoint, fit
from largeloss.experiment.config import Config, explicit_flags, parse_args, sweep_configs
from largeloss.utils.distributed import destroy, world_from_environment
from largeloss.utils.errors import InputError, TrainingDiverged


def main(argv: list[str] | None = None) -> int:
    configs = sweep_configs(argv)
    if configs is not None:
        return run_sweep(configs)
    config = parse_args(argv)
    given = explicit_flags(argv)
    world = world_from_environment()  # torchrun's processes; only rank 0 prints
    with open(os.devnull, "w") as devnull:
        with nullcontext() if world.is_main else redirect_stdout(devnull):
            try:
                return run(config, given, world.is_main)
            finally:
                destroy(world)


def run(config: Config, given: set[str], writes: bool = True) -> int:
    """Train (or evaluate) as configured; the exit code. A run first owns its folder (the
    checkpoint's with --resume); a failure is recorded in error.txt only in a folder it owns."""
    try:
        if config.eval_only:
            evaluate_checkpoint(config.eval_only, config.device, config.num_workers, config.split,
                                {flag: getattr(config, flag) for flag in ("data_root", "image_dir")
                                 if flag in given})
            return 0
        if config.resume:
            if not Path(config.resume).is_file():
                raise InputError(f"--resume {config.resume}: no such file")
            config = dataclasses.replace(config, out_dir=str(Path(config.resume).parent))
        folder = RunFolder(config.out_dir, writes=writes)
        with folder.owned(resume=bool(config.resume), overwrite=config.overwrite):
            return train(config, given, folder)
    except (InputError, TrainingDiverged) as error:  # a clear message, no traceback
        print(f"error: {error}", file=sys.stderr)
        return exit_code(error)


def train(config: Config, given: set[str], folder: RunFolder) -> int:
    try:
        saved = None
        if config.resume:  # read once: for its configuration, then its state
            saved = read_checkpoint(config.resume, "--resume")
            config = resume_config(config.resume, config, given, saved)
        fit(config, saved=saved)
    except (InputError, TrainingDiverged) as error:
        folder.record_failure(str(error))
        print(f"error: {error}", file=sys.stderr)
        return exit_code(error)
    except BaseException:
        # Under torchrun another rank's failure (a corrupt image, say) reaches this one as a lost
        # connection: the error.txt the failing rank wrote during this run is kept.
        several = world_from_environment().size > 1
        folder.record_failure(traceback.format_exc(), keep_existing=several)
        raise
    return 0


def run_sweep(configs: list[Config]) -> int:
    """--sweep_delta_rel: every head's folder owned (refused if it holds a run, unless
    --overwrite), the heads trained together; a failure is recorded in every head's folder."""
    if world_from_environment().size > 1:
        print("error: --sweep_delta_rel runs in one process (its heads share one device): run it "
              "without torchrun", file=sys.stderr)
        return 2
    folders = [RunFolder(config.out_dir) for config in configs]
    try:
        with ExitStack() as owned:
            for config, folder in zip(configs, folders):
                owned.enter_context(folder.owned(overwrite=config.overwrite))
            return train_sweep(configs, folders)
    except (InputError, TrainingDiverged) as error:  # a folder that cannot be owned
        print(f"error: {error}", file=sys.stderr)
        return exit_code(error)


def train_sweep(configs: list[Config], folders: list[RunFolder]) -> int:
    try:
        fit_sweep(configs)
    except (InputError, TrainingDiverged) as error:
        for folder in folders:
            folder.record_failure(str(error))
        print(f"error: {error}", file=sys.stderr)
        return exit_code(error)
    except BaseException:
        for folder in folders:
            folder.record_failure(traceback.format_exc())
        raise
    return 0


def exit_code(error: Exception) -> int:
    """2 for bad input, 3 for a diverged run."""
    return 2 if isinstance(error, InputError) else 3


if __name__ == "__main__":
    raise SystemExit(main())
