"""`shapecheck eval RUN [--data PATH]`: accuracy and confusion matrix of a trained run; for a
segmentation run the pixel accuracy, the per-class IoU and the confusion matrix over pixels,
for a regression run MSE, MAE and PSNR (--predictions PNG draws them).

RUN is the folder `shapecheck build --train` wrote (runs/<name>). The module is rebuilt from
its model.py, the weights come from model.pt (model_best.pt with --best), and the images are
normalised with the run's training mean/std. Without --data the run's own dataset is used;
--data naming the run's own dataset file is read with the run's dataset entry too, so the
test split is the part held out from training (--split all scores every image).

Exit codes: 0 done; 1 the run cannot be evaluated here (no such device); 2 usage or input
error (no such run folder; a damaged run folder: run.json, model.py or the weights missing,
unreadable, not shapecheck's or not fitting each other; a dataset that cannot be read or does
not fit).
torch is imported only when the command runs."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from . import EXIT_INVALID, EXIT_OK, fail


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="accuracy and confusion matrix of a trained run",
                       description="Evaluate a run folder written by `shapecheck build --train`: "
                       "accuracy, loss and the confusion matrix (rows: true class, columns: "
                       "predicted) on a dataset.")
    p.add_argument("run_dir", metavar="RUN", help="the run folder, e.g. runs/lecture_cnn")
    p.add_argument("--data", metavar="PATH",
                   help="dataset (relative to the current folder), or 'synthetic', 'mnist-seg', "
                   "'mnist-sr'; default: "
                   "the one the run was trained on")
    p.add_argument("--data-format", choices=["idx", "npz", "folder", "synthetic", "mnist-seg",
                                             "mnist-sr"],
                   help="the dataset's format (default: detected from PATH)")
    p.add_argument("--split", choices=["test", "val", "train", "all"], default="test",
                   help="which split to score (default: test): the test split, the validation "
                   "part (val_fraction), the part trained on, or every image")
    p.add_argument("--best", action="store_true",
                   help="score model_best.pt (the best validation epoch) instead of model.pt")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   type=str.lower, help="auto (default): cuda, then mps, then cpu")
    p.add_argument("--batch-size", type=int, default=256, metavar="B",
                   help="images per forward pass (default: 256)")
    p.add_argument("--predictions", metavar="PNG",
                   help="segmentation and regression runs: draw the first images, their "
                   "targets and the predictions into this PNG")
    p.set_defaults(run=run)


_fail = partial(fail, "eval")


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        return _fail(f"no such run folder: {run_dir}")
    if args.batch_size < 1:
        return _fail(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.data_format is not None and args.data is None:
        return _fail("--data-format needs --data")

    from pydantic import ValidationError

    from ..core.trainspec import NAMED_DATASETS, DatasetSpec

    data = None
    if args.data is not None:
        named = args.data in NAMED_DATASETS and args.data_format in (None, args.data)
        entry = ({"format": args.data} if named else
                 {"path": args.data, "format": args.data_format})
        try:
            data = DatasetSpec.model_validate(entry)
        except ValidationError as e:
            return _fail("bad dataset: " + "; ".join(
                err["msg"].removeprefix("Value error, ") for err in e.errors()))

    from ..training import (
        BEST_FILE,
        MODEL_FILE,
        DataError,
        RunFolderError,
        TrainError,
        evaluate,
        format_confusion,
        format_dense,
    )
    from ..training.runinfo import RunInfo, RunInfoError

    try:
        RunInfo.load(run_dir)  # a damaged run.json is an input error (exit 2)
        result = evaluate(run_dir, data, base_dir=Path.cwd(), split=args.split,
                          device=args.device, batch_size=args.batch_size,
                          weights=BEST_FILE if args.best else MODEL_FILE,
                          predictions=Path(args.predictions) if args.predictions else None)
    except RunInfoError as e:
        return _fail(str(e))
    except (DataError, RunFolderError) as e:
        return _fail(str(e))
    except TrainError as e:
        return _fail(str(e), EXIT_INVALID)
    except OSError as e:  # --predictions cannot be written
        return _fail(f"cannot write {e.filename or args.predictions}: {e.strerror or e}")
    print(format_dense(result) if result.dense is not None else format_confusion(result))
    if args.predictions and result.dense is not None:
        print(f"wrote {args.predictions}")
    elif args.predictions:
        print(f"note: --predictions draws segmentation and regression runs; {run_dir} "
              "classifies, so nothing was written")
    return EXIT_OK
