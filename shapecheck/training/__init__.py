"""Training and evaluating a built module: ``shapecheck build --train`` and ``shapecheck eval``.

The parts, in the order a run meets them: ``fromplan`` (what ``build --train`` asks: the run
folder, its lock, the module from its source, ``--init``), ``request`` (``TrainRequest``, a
run's arguments), ``setup`` (the device, the spec's checks, the data on the device, the
optimizer, the precision; ``Run``, the state a run carries), ``resume`` (continuing from a
checkpoint), ``loop`` (``train()``: the epochs and steps), ``checkpoint`` (``Checkpoint``:
checkpoint.pt), ``runinfo`` (``RunInfo``: run.json), ``runfolder`` (metrics, curves and the
other files), ``distributed`` (the processes of a
DDP run and their launcher), ``data`` (what the loop needs of the dataset), ``dense`` (the
per-pixel losses and scores of segmentation and regression), ``evaluate``
(``evaluate()``), ``init`` (``--init`` weights and ``freeze``), ``syncbn`` (BatchNorm over the
global batch under DDP), ``scoring`` (scores shared over the ranks), ``ema`` (the weight
average), ``augment`` (resized crops, erasing, TrivialAugment, mixup, cutmix) and ``base``
(errors, devices, losses shared by all).

``train()`` reads the whole dataset into memory once (``shapecheck.training.datasets``),
normalises it once, and runs a plain loop that indexes whole batches from the
preloaded tensors; the loss and accuracy of each step stay on the device and
are only summed every few steps (to check for NaN and to draw the progress
bar), so the loop costs about what a hand-written one does.

The run folder (``runs/<name>/`` unless told otherwise) holds, each file written
atomically (``shapecheck.core.atomic``), so a kill at any instant leaves the last
complete checkpoint loadable:

- ``model.pt``       the model's ``state_dict`` after the last completed epoch
- ``model_ema.pt``   with ``ema``: the moving average of the weights (``ema``)
- ``model_best.pt``  with a validation split: the epoch of the best validation
                     accuracy (ties: lower validation loss)
- ``checkpoint.pt``  model, optimizer, epoch, step within the epoch, RNG states,
                     metrics so far: what ``--resume`` continues from
- ``metrics.csv``    one row per epoch, columns ``METRICS_COLUMNS``
- ``curves.png``     loss and accuracy (pixel accuracy and mIoU, or PSNR) per epoch
- ``predictions.png`` a dense task's first test images, targets and predictions
- ``model.py``       the emitted model source
- ``run.json``       what ``eval`` needs: input shape, classes, normalisation,
                     the dataset, the train spec, the module's class name; and
                     each resume, with what changed
- ``tensorboard/``   with ``tensorboard: true``: the numbers of metrics.csv as event files

Reproducibility: the seed seeds torch's global RNG and re-initialises the
module's parameters; the data order of epoch e comes from a generator seeded
with (seed, e) alone. A resumed run restores the RNG state, the optimizer and
the position inside the epoch, so with the same spec (and the same number of
threads) it ends with the same weights as a run that was never stopped. A
resume mid-epoch refuses a change of seed, batch size, drop_last or dataset
(the rest of the epoch could not be replayed); at an epoch boundary the change
applies from the next epoch and is named. Ctrl-C, SIGTERM and SIGUSR1 are caught
between steps: the current position is saved (an exact mid-epoch checkpoint) and
``loop.Stopped`` (a KeyboardInterrupt naming the signal) is raised for the caller
to exit 128 + the signal; a second one stops at once, keeping the last saved
checkpoint. ``checkpoint_every: N`` saves the same every N optimizer steps.

``evaluate()`` rebuilds the module from the run folder's ``model.py`` (or takes
one passed in), loads ``model.pt`` and scores it with the run's normalisation.
"""

from importlib import import_module

# Each public name and the module that holds it, imported on first use: the run folder's files
# are read (runinfo) where torch is not installed, so importing this package imports no torch.
_WHERE = {
    **dict.fromkeys(["RunFolderError", "TrainError", "default_loss", "select_device"], "base"),
    **dict.fromkeys(["DataError", "MemoryLimitError"], "datasets"),
    **dict.fromkeys(["EvalResult", "evaluate", "format_confusion", "format_dense",
                     "load_run_module"], "evaluate"),
    **dict.fromkeys(["run_training", "train"], "loop"),
    "TrainRequest": "request",
    **dict.fromkeys(["BEST_FILE", "CHECKPOINT_FILE", "CURVES_FILE", "METRICS_COLUMNS",
                     "METRICS_FILE", "MODEL_FILE", "RUN_FILE", "RUN_FILES", "SOURCE_FILE",
                     "EpochMetrics", "TrainResult"], "runfolder"),
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "BEST_FILE",
    "CHECKPOINT_FILE",
    "CURVES_FILE",
    "METRICS_COLUMNS",
    "METRICS_FILE",
    "MODEL_FILE",
    "RUN_FILE",
    "SOURCE_FILE",
    "DataError",
    "EpochMetrics",
    "EvalResult",
    "MemoryLimitError",
    "RunFolderError",
    "TrainError",
    "TrainRequest",
    "TrainResult",
    "default_loss",
    "evaluate",
    "format_confusion",
    "format_dense",
    "load_run_module",
    "run_training",
    "select_device",
    "train",
]
