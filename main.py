"""Entry point. Examples:

    python main.py                                    # embedded digits dataset, AN + LL-R, ~1 min on CPU
    python main.py --dataset coco --mod_scheme LL-Ct  # a cell of the LL paper, authors' defaults
    python main.py --dataset pascal --loss role       # a Cole et al. baseline
    python main.py --resume runs/X/last.pt            # continue an interrupted run
    python main.py --resume runs/X/last.pt --epochs 30   # extend a finished run to 30 epochs
    python main.py --eval_only runs/X/best.pt         # test mAP of a saved model
    python main.py --train_mode linear --mod_scheme LL-R,LL-Ct,LL-Cp --sweep_delta_rel 0.1,0.2,0.3 \
        --out_dir runs/sweep                          # 9 linear heads in one pass, a folder each
    torchrun --nproc_per_node=4 main.py --dataset coco --mod_scheme LL-Ct   # 4 GPUs, global batch 16

`python -m largeloss` and the `largeloss` command run the same entry (largeloss/cli.py).
"""
from largeloss.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
