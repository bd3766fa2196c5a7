"""hpo's error types. Each carries one line a user can act on; the command line prints it as
`hpo: error: <line>` and exits with the error's `exit_code`. Anything else that escapes a
command is a bug in hpo and is shown with its traceback.

    HpoError            the base; exit status 2 (bad input: nothing was started or changed)
      ConfigError       a config key or value, a setting or an option out of its range
      SpaceError        a space file that cannot be used
      DataError         a dataset that cannot be used
      WeightsError      a pretrained weights file that is missing
      StudyError        a study folder, its record or an option that refuses to start
        StudyLocked     another live driver holds the study
      ExportError       a model that cannot be exported as asked
      PredictError      a model or a path hpo predict cannot use
      Infeasible        a config that cannot be built or would not fit (a draw, not a user's
                        mistake: the searcher rejects it and draws again)
      SpaceInfeasible   almost every draw of a space is infeasible
      StudyFault        a fault mid-search (storage outage, full disk) stopped it cleanly;
                        exit status 1, and the same command resumes
"""

from __future__ import annotations


class HpoError(ValueError):
    """An error hpo expects and explains in one line (a ValueError, for callers of the Python
    API who catch that)."""

    exit_code = 2


class ConfigError(HpoError):
    """A config key, a value, a setting or an option that is not allowed."""


class SpaceError(HpoError):
    """A space file that cannot be used; the message names the file."""


class DataError(HpoError):
    """A dataset that cannot be used; the message is one line: `<path>: <problem>`."""


class WeightsError(HpoError):
    """A pretrained weights file a search or a retrain needs is missing."""


class StudyError(HpoError):
    """A study that refuses to start or to be read: bad options, files, folder or record.
    Raised before anything is written."""


class StudyLocked(StudyError):
    """Another live driver holds the study; the message names its host and PID."""


class Infeasible(HpoError):
    """A config that cannot be built for this input size (e.g. too many valid convs or pools),
    or would not fit the device's memory.

    `keys` are the config keys that together caused it (what to change); `excess` (> 0) says
    how far over the limit it is, so a sampler can tell nearly feasible from hopeless.
    """

    def __init__(self, message: str, keys: tuple[str, ...] = (), excess: float = 1.0):
        super().__init__(message)
        self.keys, self.excess = tuple(keys), float(excess)


class SpaceInfeasible(SpaceError):
    """Almost every draw of the space is infeasible; the message names the dimensions."""


class ExportError(HpoError):
    """A model that cannot be exported as asked; the message names the file."""


class PredictError(HpoError):
    """A model or a path `hpo predict` cannot use."""


class StudyFault(HpoError):
    """A search stopped by a fault it could not ride out (its storage unreachable, a full
    disk): everything up to then is kept, and the same command resumes."""

    exit_code = 1
