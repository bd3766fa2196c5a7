"""A study's model as a file that runs without hpo: ONNX (onnxruntime, any language) or a
torch.export program (.pt2, torch alone), the trials' preprocessing inside (hpo.classifier).

The weights are the best trial's (best.pt), a retrain's (final/best-seed<N>.pt), or every
member of a retrained ensemble's (final/ensemble-<i>.pt, one file averaging them); the
normalisation statistics are those the weights were trained with, recomputed from the study's
data and checked against the fingerprint the study or the retrain recorded. What the model
takes and gives, its classes, its config and its statistics travel inside the file:
ONNX `metadata_props` (each value a JSON text) or the .pt2 archive's extra file `hpo.json`.

Nothing here imports torch before every file the export needs has been found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from hpo.config import read_config
from hpo.errors import ExportError
from hpo.files import read_json_object, replace_file
from hpo.folder import StudyFolder
from hpo.status import Status
from hpo.study import read_meta

if TYPE_CHECKING:
    import torch

    from hpo.classifier import Ensemble, ImageClassifier

    Model = ImageClassifier | Ensemble

FORMATS = {".onnx": "ONNX", ".pt2": "torch.export program"}
INPUT, OUTPUT = "images", "probabilities"
EXTRA_FILE = "hpo.json"  # the .pt2 archive's metadata
# how far an export's probabilities may be from the eager model's, checked on every export:
# on images of the trials' size the same arithmetic (measured ~1e-7: float32 kernels summing
# in another order); on other sizes onnxruntime's resize may round a pixel the other way
TOLERANCE, TOLERANCE_RESIZED = 1e-4, 1e-2


@dataclass(frozen=True)
class Weights:
    """Which trained network to export: its config, its weights file, and the fingerprint of
    the data it was trained on (None where the study recorded none)."""

    config: dict[str, Any]
    file: Path
    fingerprint: str | None
    final: bool  # a retrain on train+val, so normalised with train+val's statistics


def find_weights(study: Path, final: bool = False, seed: int | None = None) -> Weights:
    """The best trial's network (best.json, best.pt), or with `final` the retrain of seed
    `seed` (default: the first that completed) in final/. ExportError if it is not there."""
    folder = StudyFolder(study)
    if not final:
        if seed is not None:
            raise ExportError("--seed picks a retrain in final/; pass --final with it")
        for path in (folder.best_config, folder.best_weights):
            if not path.is_file():
                raise ExportError(f"{study}: no {path.name} yet (no trial has finished)")
        return Weights(read_config(folder.best_config), folder.best_weights,
                       read_meta(study).get("fingerprint"), final=False)
    results_file = folder.final / "results.json"
    if not results_file.is_file():
        raise ExportError(f"{study}: no retrained model ({results_file} is missing); "
                          f"run hpo train {study} first")
    results = read_json_object(results_file, "results file")
    runs = [r for r in results.get("runs", []) if r.get("status") == Status.COMPLETED
            and r.get("weights")]
    chosen = [r for r in runs if seed is None or r["seed"] == seed][:1]
    if not chosen:
        have = ", ".join(str(r["seed"]) for r in runs) or "none"
        raise ExportError(f"{results_file}: no completed retrain of seed {seed} "
                          f"(completed seeds: {have})")
    file = folder.final / chosen[0]["weights"]
    if not file.is_file():
        raise ExportError(f"{file}: missing (named in {results_file})")
    return Weights(dict(results["config"]), file, results.get("train_fingerprint"), final=True)


def find_ensemble(study: Path) -> tuple[list[Weights], dict[str, Any]]:
    """The networks of the ensemble `hpo train --ensemble` retrained (its members that
    completed, in order) and its summary in final/results.json. ExportError if there is
    none or a member's weights file is missing."""
    results_file = StudyFolder(study).final / "results.json"
    results = read_json_object(results_file, "results file") if results_file.is_file() else {}
    summary = results.get("ensemble")
    if not summary:
        raise ExportError(f"{study}: no retrained ensemble (no \"ensemble\" in "
                          f"{results_file}); run hpo train {study} --ensemble K first")
    members = []
    for m in summary["members"]:
        file = results_file.parent / (m.get("weights") or "")
        if m.get("status") != Status.COMPLETED:
            continue
        if not file.is_file():
            raise ExportError(f"{file}: missing (named in {results_file})")
        members.append(Weights(dict(m["config"]), file, summary.get("train_fingerprint"),
                               final=True))
    if not members:
        raise ExportError(f"{results_file}: no member of the ensemble completed")
    return members, summary


def export_model(study: str | Path, out: str | Path, *, final: bool = False,
                 seed: int | None = None, ensemble: bool = False, data: str | None = None,
                 fraction: float | None = None) -> Path:
    """Write the study's model to `out`, in the form its suffix names (.onnx or .pt2), and
    return `out`. `final`/`seed` pick a retrain in final/ instead of best.pt; `ensemble`
    the ensemble `hpo train --ensemble` retrained there, all its members in the one file;
    `data` and `fraction` are where the study's images are now and the fraction `hpo train`
    had, when not the study's own (the statistics are recomputed from them, and must match).

    Raises ExportError (one line) for a missing file or data that differs from the data the
    weights were trained on."""
    study, out = Path(study), Path(out)
    StudyFolder(study).check()
    if out.suffix not in FORMATS:
        raise ExportError(f"{out}: the suffix names the form: .onnx (ONNX) or .pt2 "
                          "(torch.export program)")
    if not out.parent.is_dir():
        raise ExportError(f"{out.parent}: no such folder (--model)")
    if ensemble and seed is not None:
        raise ExportError("--seed picks one retrain; --ensemble exports all its members")
    if ensemble:
        weights, summary = find_ensemble(study)
    else:
        weights, summary = [find_weights(study, final, seed)], None
    from hpo.preflight import check_data_path

    check_data_path(data)
    classifier, classes = (load_ensemble(study, weights, data, fraction) if ensemble
                           else load_classifier(study, weights[0], data, fraction))
    meta = describe(classifier, classes, study, weights, summary)
    if out.suffix == ".onnx":
        write_onnx(classifier, out, meta)
    else:
        write_program(classifier, out, meta)
    return out


def load_classifier(study: Path, weights: Weights, data: str | None = None,
                    fraction: float | None = None) -> tuple[ImageClassifier, tuple[str, ...]]:
    """`weights`' network behind its trials' preprocessing, and the class names: the study's
    data is loaded (from hpo's cache once decoded) for its classes, image size and the
    normalisation statistics the weights were trained with."""
    dataset, dev = _trained_on(study, weights, data, fraction)
    return _classifier(weights, dataset, dev), dataset.classes


def load_ensemble(study: Path, members: list[Weights], data: str | None = None,
                  fraction: float | None = None) -> tuple[Ensemble, tuple[str, ...]]:
    """`members` (find_ensemble's) as one model averaging their probabilities, each behind
    its own config's preprocessing, and the class names; as `load_classifier`, but the data
    is loaded once (the members were trained on the same images)."""
    from hpo.classifier import Ensemble

    dataset, dev = _trained_on(study, members[0], data, fraction)
    return Ensemble([_classifier(w, dataset, dev) for w in members]), dataset.classes


def _trained_on(study: Path, weights: Weights, data: str | None, fraction: float | None):
    """(the study's data, the device data `weights` were trained on): loaded, and checked
    against the fingerprint the study or the retrain recorded."""
    import torch

    from hpo.device import to_device
    from hpo.study import load_study_data

    _, dataset = load_study_data(study, data, fraction)
    trained_on = dataset.train_and_val() if weights.final else dataset
    if weights.fingerprint and trained_on.fingerprint != weights.fingerprint:
        hint = ("the --data and --fraction hpo train had" if weights.final
                else "--data where the study's images are now")
        raise ExportError(f"{weights.file}: trained on other images than these (data "
                          f"fingerprint {weights.fingerprint}, these {trained_on.fingerprint}); "
                          f"pass {hint}")
    return dataset, to_device(trained_on, torch.device("cpu"))


def _classifier(weights: Weights, dataset, dev) -> ImageClassifier:
    import torch

    from hpo.classifier import ImageClassifier
    from hpo.model import build_model

    state = torch.load(weights.file, map_location="cpu", weights_only=True)
    # built on the meta device, then given the file's tensors: no random initialisation of
    # weights about to be replaced, and no pretrained backbone file needed (best.pt has all)
    with torch.device("meta"):
        model = build_model(weights.config, dataset.image_shape, dataset.num_classes)
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        raise ExportError(f"{weights.file}: does not fit its config "
                          f"({str(exc).strip().splitlines()[0]})") from None
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ExportError(f"{weights.file}: holds no {left[0]}")
    return ImageClassifier(model, weights.config, dataset.image_shape, dev.mean, dev.std)


def describe(classifier: Model, classes: tuple[str, ...], study: Path,
             weights: list[Weights], ensemble: Mapping[str, Any] | None = None
             ) -> dict[str, Any]:
    """The metadata an exported model carries: what a user of the file needs to know. An
    ensemble (`ensemble`: its summary in final/results.json) lists its members, each with
    its trial, seed, test accuracy, weights, config and normalisation."""
    c, h, w = classifier.channels, classifier.height, classifier.width
    meta = {
        "producer": f"hpo {_version()}",
        "classes": list(classes),
        "input": {"name": INPUT, "dtype": "uint8", "layout": "NHWC", "shape": ["N", "H", "W",
                  "C"], "channels": "1 (L), 2 (LA), 3 (RGB) or 4 (RGBA; alpha dropped)",
                  "size": f"any; converted to {'L' if c == 1 else 'RGB'} and resized "
                          f"(bilinear, as PIL) to {h}x{w}, as hpo decoded the trials' images"},
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["N", len(classes)],
                   "values": "softmax probabilities, in the order of classes"
                   + (f", the mean of {len(weights)} models'" if ensemble else "")},
        "image_shape": [c, h, w],
    }
    source = {"study": study.name, "weights": [str(x.file.relative_to(study)) for x in weights],
              "data_fingerprint": weights[0].fingerprint}
    if ensemble is None:
        return {**meta, "normalization": _normalization(classifier, weights[0]),
                "config": classifier.config,
                "source": {**source, "weights": source["weights"][0]}}
    done = [m for m in ensemble["members"] if m.get("status") == Status.COMPLETED]
    members = [{"trial_id": m.get("trial_id"), "seed": m["seed"], "test_acc": m["test_acc"],
                "weights": str(x.file.relative_to(study)), "config": net.config,
                "normalization": _normalization(net, x)}
               for m, net, x in zip(done, classifier.members, weights)]
    return {**meta, "ensemble": {"of": ensemble["of"], "k": len(members),
                                 "test_acc": ensemble["test_acc"], "members": members},
            "source": source}


def _normalization(classifier: ImageClassifier, weights: Weights) -> dict[str, Any]:
    from hpo.backbone import IMAGENET_MEAN, IMAGENET_STD, uses_backbone

    config = classifier.config
    if uses_backbone(config) and config["pretrained"]:
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "of": "ImageNet"}
    if config["normalize"]:
        return {"mean": classifier.mean.flatten().tolist(),
                "std": classifier.std.flatten().tolist(),
                "of": "train+val" if weights.final else "the training split"}
    return {"mean": None, "std": None, "of": "none: pixels /255 only"}


def _version() -> str:
    try:
        return package_metadata.version("hpo")
    except package_metadata.PackageNotFoundError:
        return "unknown"


def example_input(classifier: Model, size: tuple[int, int] | None = None,
                  batch: int = 3) -> torch.Tensor:
    """Random uint8 RGB images [batch, H, W, 3], by default of a size the trials did not see:
    what exporting traces with, so that no dimension is taken for a constant."""
    import torch

    generator = torch.Generator().manual_seed(0)
    h, w = size or (classifier.height + 5, classifier.width + 7)
    return torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8, generator=generator)


def exported_program(classifier: Model) -> torch.export.ExportedProgram:
    """`classifier` traced by torch.export, with any batch size, image size and channels
    (1 to 4) left open."""
    import torch
    from torch.export import Dim

    example = example_input(classifier)
    # once outside tracing first: hpo.backbone.prepare_input caches ImageNet's statistics per
    # device on first use, and must cache real tensors, not the tracer's stand-ins
    with torch.no_grad():
        classifier(example)
    shapes = {INPUT: {0: Dim("batch"), 1: Dim("height"), 2: Dim("width"),
                      3: Dim("channels", min=1, max=4)}}
    return torch.export.export(classifier, (example,), dynamic_shapes=shapes)


def write_onnx(classifier: Model, out: Path, meta: Mapping[str, Any]) -> None:
    """`classifier` as an ONNX file at `out` (input `images`, output `probabilities`), with
    `meta` in its metadata_props, checked in onnxruntime against the eager model."""
    import torch

    program = torch.onnx.export(exported_program(classifier), dynamo=True,
                                input_names=[INPUT], output_names=[OUTPUT], verbose=False)
    shape = program.model.graph.inputs[0].shape
    program.rename_axes(dict(zip(shape, ("N", "H", "W", "C"))))
    program.model.metadata_props.update(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    program.model.doc_string = ("uint8 images [N, H, W, C] -> class probabilities [N, K]; "
                                "metadata_props say the rest")
    proto = program.model_proto.SerializeToString()
    _check(classifier, lambda x: _run_onnx(proto, x), out)
    with replace_file(out) as f:
        f.write(proto)


def write_program(classifier: Model, out: Path, meta: Mapping[str, Any]) -> None:
    """`classifier` as a torch.export archive at `out`, with `meta` as its extra file
    hpo.json; `torch.export.load(out).module()` runs it with torch alone."""
    import torch

    program = exported_program(classifier)
    _check(classifier, lambda x: program.module()(x), out)
    with replace_file(out) as f:
        torch.export.save(program, f, extra_files={EXTRA_FILE: json.dumps(meta)})


def _run_onnx(proto: bytes, x: torch.Tensor):
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(proto, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {INPUT: x.numpy()})[0])


def _check(classifier: Model, run, out: Path) -> None:
    """Refuse to write an export whose outputs differ from the eager model's."""
    import torch

    for x, tolerance in [(example_input(classifier, (classifier.height, classifier.width)),
                          TOLERANCE), (example_input(classifier), TOLERANCE_RESIZED)]:
        with torch.no_grad():
            diff = (classifier(x) - run(x)).abs().max().item()
        if not diff <= tolerance:
            raise ExportError(f"{out}: the exported model's probabilities differ from the "
                              f"network's by {diff:.2g} (more than {tolerance:g}); not written")
