"""Pretrained backbones' weights files: where they are looked for, and the check that a search
or a retrain has every file it needs before anything starts.

hpo never downloads during a search. A file is read from the folder of --weights-dir (exported
as $HPO_WEIGHTS_DIR, so trial processes see it), else from torchvision's own cache
(torch.hub.get_dir()/checkpoints, under $TORCH_HOME), under the name torchvision gives it. This
module imports neither torch nor torchvision: a missing file is told in a fraction of a second.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlparse

from hpo.config import SCHEMA
from hpo.errors import WeightsError
from hpo.registry import BACKBONES
from hpo.space import Choice

WEIGHTS_ENV = "HPO_WEIGHTS_DIR"


def weights_url(name: str) -> str:
    """Where torchvision downloads the default ImageNet weights of backbone `name` from."""
    return BACKBONES[name].url


def weights_filename(name: str) -> str:
    """The file name torchvision stores those weights under (torch.hub's rule: the URL's)."""
    return os.path.basename(urlparse(weights_url(name)).path)


def hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, TORCH_HOME defaulting to
    $XDG_CACHE_HOME/torch, then ~/.cache/torch."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    home = os.environ.get("TORCH_HOME") or os.path.join(cache, "torch")
    return Path(os.path.expanduser(home)) / "hub"


def weights_folders() -> list[Path]:
    """Where weights files are looked for, in order: $HPO_WEIGHTS_DIR, torchvision's cache."""
    folders = [Path(os.environ[WEIGHTS_ENV])] if os.environ.get(WEIGHTS_ENV) else []
    return folders + [hub_dir() / "checkpoints"]


def find_weights(name: str) -> Path | None:
    """The weights file of backbone `name`, or None when no folder has it."""
    filename = weights_filename(name)
    for folder in weights_folders():
        if (folder / filename).is_file():
            return folder / filename
    return None


def missing_message(name: str) -> str:
    """One line: which file is missing, where it was looked for, the command that fetches it."""
    folders = weights_folders()
    where = " or ".join(str(f) for f in folders)
    fetch = (f"python -c \"import torch.hub; torch.hub.load_state_dict_from_url("
             f"'{weights_url(name)}', model_dir='{folders[0]}', check_hash=True)\"")
    return f"{name}: pretrained weights {weights_filename(name)} are not in {where}; " \
           f"fetch them with: {fetch}"


def pretrained_backbones(configs: Iterable[Mapping[str, Any]] = (), space=None) -> set[str]:
    """The backbones whose pretrained weights `configs`, or any config `space` may draw or
    start from, need."""
    configs = list(configs)
    if space is not None:
        configs += [space.point(n) for n in space.starting_points]
        dims = space.dimensions

        def values(key):
            dim = dims.get(key, SCHEMA[key].default)
            return dim.values if isinstance(dim, Choice) else (dim,)

        if True in values("pretrained"):
            configs += [{"backbone": b, "pretrained": True} for b in values("backbone")]
    return {c["backbone"] for c in configs
            if c.get("backbone", "none") != "none" and c.get("pretrained", True)}


def check_weights(configs: Iterable[Mapping[str, Any]] = (), weights_dir: str | None = None,
                  space=None) -> None:
    """Before a search or a retrain: make `weights_dir` (when given) the first place weights
    are looked for, here and in trial processes started after this ($HPO_WEIGHTS_DIR), and
    raise WeightsError naming the first missing file and the command that fetches it."""
    if weights_dir is not None:
        folder = Path(weights_dir).expanduser().resolve()
        if not folder.is_dir():
            raise WeightsError(f"--weights-dir {weights_dir}: no such folder")
        os.environ[WEIGHTS_ENV] = str(folder)
    for name in sorted(pretrained_backbones(configs, space)):
        if find_weights(name) is None:
            raise WeightsError(missing_message(name))
