"""Writes the synthetic head phantom dataset (unpaired MR/CT training set, paired test set) as NIfTI.

Usage:
    python examples/make_phantom.py OUT_DIR [--seed N] [--n-train-mr N] [--n-train-ct N] [--n-test N]
                                            [--shape X Y Z] [--spacing SX SY SZ] [--overwrite]

The same as ``medcyclegan sample-data OUT_DIR``; see examples/README.md for the whole demo
(train, convert, evaluate).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

try:
    from medcyclegan.errors import MedCycleGANError
    from medcyclegan.sample_data import DEFAULT_SHAPE, DEFAULT_SPACING, write_sample_dataset
except ModuleNotFoundError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from medcyclegan.errors import MedCycleGANError
    from medcyclegan.sample_data import DEFAULT_SHAPE, DEFAULT_SPACING, write_sample_dataset

logger = logging.getLogger("medcyclegan")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write the medcyclegan head phantom: unpaired MR/CT training data and a paired test set."
    )
    parser.add_argument("out_dir", type=Path, help="dataset folder (must be empty or missing)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--n-train-mr", type=int, default=6, help="MR training subjects (default 6)")
    parser.add_argument(
        "--n-train-ct", type=int, default=6, help="CT training subjects, other people (default 6)"
    )
    parser.add_argument("--n-test", type=int, default=3, help="paired test subjects (default 3)")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=DEFAULT_SHAPE, metavar=("X", "Y", "Z"), help="grid in voxels"
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=DEFAULT_SPACING,
        metavar=("SX", "SY", "SZ"),
        help="voxel size in mm",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the script; returns the exit status (0 success, 2 for a user error)."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    try:
        dataset = write_sample_dataset(
            args.out_dir,
            n_train_mr=args.n_train_mr,
            n_train_ct=args.n_train_ct,
            n_test=args.n_test,
            seed=args.seed,
            overwrite=args.overwrite,
            shape=tuple(args.shape),
            spacing=tuple(args.spacing),
        )
    except MedCycleGANError as exc:
        logger.error("error: %s", exc)
        return exc.exit_code
    logger.info(
        "%s: %d MR + %d CT training subjects, %d paired test subjects written in %.1f s (see README.txt)",
        dataset.root,
        len(dataset.train_mr),
        len(dataset.train_ct),
        len(dataset.test_mr),
        time.perf_counter() - start,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
