"""The training API under its former name; it lives in ``shapecheck.training``."""

from shapecheck.training import *
from shapecheck.training import __all__  # noqa: F401
from shapecheck.training.runfolder import RUN_FILES  # noqa: F401
