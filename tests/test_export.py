"""`hpo export --model`: a study's network with its trials' preprocessing, as ONNX and as a
torch.export program, agrees with the network as hpo evaluates it, and runs without hpo (and
the ONNX file without torch).

Agreement, on the study's whole test split: probabilities within PROB_TOL of the trials'
evaluation path (hpo.model.build_model + hpo.train.preprocess in float32 on the CPU), the same
top-1 class on at least 99.9% of the images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpo.classifier import ImageClassifier, resize_like_pil
from hpo.config import read_config
from hpo.export import EXTRA_FILE, ExportError, export_model
from hpo.files import read_json_object
from hpo.model import build_model
from hpo.sources import convert_image
from hpo.study import load_study_data
from hpo.train import preprocess, to_device

ROOT = Path(__file__).parents[1]
PROB_TOL = 1e-4  # measured: ~1e-7 (float32 kernels summing in another order)
TOP1_SAME = 0.999


def reference(study: Path, final: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(the study's test images as uint8 NHWC, the probabilities hpo's own path gives them):
    the network built as for its trials, fed as hpo.train.evaluate feeds it."""
    _, data = load_study_data(study)
    if final:
        results = read_json_object(study / "final/results.json")
        config, weights = results["config"], study / "final" / results["runs"][0]["weights"]
    else:
        config, weights = read_config(study / "best.json"), study / "best.pt"
    probs = network_probabilities(data, config, weights, final)
    return np.ascontiguousarray(data.x_test.transpose(0, 2, 3, 1)), probs


def network_probabilities(data, config: dict, weights: Path, final: bool) -> np.ndarray:
    """The probabilities of the network `config` and `weights` describe on `data`'s test
    images, fed as hpo.train.evaluate feeds it (with train+val's statistics when `final`)."""
    dev = to_device(data.train_and_val() if final else data, torch.device("cpu"))
    # built without the ImageNet file, as docs/guide/model.md says: best.pt holds every weight
    model = build_model({**config, "pretrained": False}, data.image_shape, data.num_classes)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    with torch.no_grad():
        x = preprocess(torch.as_tensor(data.x_test), dev, config, torch.float32)
        return torch.softmax(model(x), dim=1).numpy()


def assert_agree(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() < PROB_TOL
    assert (got.argmax(1) == expected.argmax(1)).mean() >= TOP1_SAME
    # a model that learned something: otherwise agreeing on top-1 would prove little
    assert expected.max(1).mean() > 0.5


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


def run_program(path: Path, images: np.ndarray) -> np.ndarray:
    module = torch.export.load(path).module()
    with torch.no_grad():
        return module(torch.from_numpy(images)).numpy()


@pytest.fixture(scope="module")
def cnn_onnx(cnn_study, tmp_path_factory) -> Path:
    return export_model(cnn_study, tmp_path_factory.mktemp("export") / "cnn.onnx")


def test_onnx_agrees_with_the_trials_network_on_the_test_split(cnn_study, cnn_onnx):
    images, expected = reference(cnn_study)
    assert_agree(run_onnx(cnn_onnx, images), expected)


def test_onnx_carries_classes_config_input_contract_and_statistics(cnn_study, cnn_onnx):
    import onnx

    model = onnx.load(cnn_onnx)
    meta = {p.key: json.loads(p.value) if p.value[:1] in "[{" else p.value
            for p in model.metadata_props}
    _, data = load_study_data(cnn_study)
    dev = to_device(data, torch.device("cpu"))
    assert meta["classes"] == [f"class{k}" for k in range(10)]
    assert meta["config"] == read_config(cnn_study / "best.json")
    assert meta["image_shape"] == [3, 32, 32]
    assert meta["input"]["layout"] == "NHWC" and meta["input"]["dtype"] == "uint8"
    assert meta["output"]["shape"] == ["N", 10]
    assert meta["normalization"]["of"] == "the training split"
    assert np.allclose(meta["normalization"]["mean"], dev.mean.flatten().numpy())
    assert np.allclose(meta["normalization"]["std"], dev.std.flatten().numpy())
    assert meta["source"]["weights"] == "best.pt"
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert [model.graph.input[0].name, *dims] == ["images", "N", "H", "W", "C"]
    assert model.graph.output[0].name == "probabilities"


def test_the_program_agrees_too_and_loads_without_hpo(cnn_study, tmp_path):
    out = export_model(cnn_study, tmp_path / "cnn.pt2")
    images, expected = reference(cnn_study)
    assert_agree(run_program(out, images), expected)
    np.save(tmp_path / "images.npy", images[:16])
    # a fresh interpreter where hpo cannot be imported: torch alone runs the archive
    code = BLOCKER + textwrap.dedent(f"""
        import json, numpy, torch
        extra = {{{EXTRA_FILE!r}: ""}}
        module = torch.export.load({str(out)!r}, extra_files=extra).module()
        probs = module(torch.from_numpy(numpy.load({str(tmp_path / "images.npy")!r})))
        numpy.save({str(tmp_path / "probs.npy")!r}, probs.detach().numpy())
        print(json.loads(extra[{EXTRA_FILE!r}])["classes"][0])
        assert not [m for m in sys.modules if m.split(".")[0] == "hpo"]
    """)
    done = subprocess.run([sys.executable, "-I", "-c", code.replace("BLOCKED", "('hpo',)")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["blocked:hpo", "class0"]
    assert_agree(np.load(tmp_path / "probs.npy"), expected[:16])


def test_the_retrained_model_exports_with_train_and_vals_statistics(cnn_study, tmp_path):
    out = export_model(cnn_study, tmp_path / "final.onnx", final=True, seed=0)
    images, expected = reference(cnn_study, final=True)
    assert_agree(run_onnx(out, images), expected)
    import onnx

    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert json.loads(meta["normalization"])["of"] == "train+val"
    assert json.loads(meta["source"])["weights"] == "final/best-seed0.pt"


@pytest.mark.e2e  # resnet18's exports take ~30 s on 2 cores
def test_a_pretrained_backbone_on_grayscale_images_exports_in_both_forms(backbone_study,
                                                                         tmp_path):
    images, expected = reference(backbone_study)
    assert images.shape[1:] == (32, 32, 1)
    assert_agree(run_onnx(export_model(backbone_study, tmp_path / "m.onnx"), images),
                 expected)
    assert_agree(run_program(export_model(backbone_study, tmp_path / "m.pt2"), images),
                 expected)
    import onnx

    meta = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert json.loads(meta["normalization"])["of"] == "ImageNet"


def test_other_sizes_and_modes_are_decoded_as_hpo_decoded_the_trials_images():
    # the model's first step against what hpo.sources does with PIL, on images of other
    # sizes (smaller, larger, other aspect) and every mode the input takes
    rng = np.random.default_rng(0)
    for channels, (h, w) in [(1, (32, 32)), (3, (32, 32)), (1, (24, 40)), (3, (45, 37)),
                             (3, (100, 64)), (1, (9, 13)), (3, (500, 375))]:
        net = ImageClassifier(torch.nn.Identity(), {}, (channels, 32, 32), torch.zeros(1),
                              torch.ones(1))
        for mode in ("L", "LA", "RGB", "RGBA"):
            a = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
            im = Image.fromarray(a[..., 0] if mode == "L" else a, mode)
            pil = np.asarray(convert_image(im, "L" if channels == 1 else "RGB", (32, 32)))
            pil = pil.reshape(32, 32, channels).transpose(2, 0, 1).astype(int)
            ours = net.decoded(torch.from_numpy(a)[None])[0].numpy().astype(int)
            diff = np.abs(ours - pil)
            # PIL sums in fixed point, and Pillow 13 takes the vertical pass first for some
            # sizes: values 1 apart, up to a quarter of them on noise (measured 74-100% equal)
            assert diff.max() <= 1, (channels, h, w, mode)
            assert (diff == 0).mean() >= 0.7, (channels, h, w, mode)
            if (h, w) == (32, 32):
                assert diff.max() == 0  # no resize: PIL's mode conversion exactly


def test_images_of_the_trials_size_are_left_alone_bit_for_bit():
    x = torch.arange(256.0).view(1, 1, 16, 16)
    assert torch.equal(resize_like_pil(x, (16, 16)), x)


BLOCKER = textwrap.dedent("""
    import importlib.abc, sys

    class Blocked(importlib.abc.MetaPathFinder):
        # as if not installed: `import torch` raises ModuleNotFoundError
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)")

    sys.meta_path.insert(0, Blocked())
    for name in BLOCKED:
        try:
            __import__(name)
        except ModuleNotFoundError:
            print("blocked:" + name)
""")

# what a user writes: numpy and onnxruntime, nothing of hpo's or torch's
USER_CODE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import onnxruntime as ort

    model, images, out = sys.argv[1:4]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])
    probs = session.run(None, {"images": np.load(images)})[0]
    np.save(out, probs)
    print(classes[int(probs[0].argmax())])
    assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "hpo")]
""")


def run_without_torch(python: str, model: Path, images: np.ndarray, tmp: Path,
                      blocked: tuple[str, ...] = ()) -> tuple[str, np.ndarray]:
    np.save(tmp / "images.npy", images)
    code = (BLOCKER.replace("BLOCKED", repr(blocked)) if blocked else "") + USER_CODE
    done = subprocess.run([python, "-I", "-c", code, str(model), str(tmp / "images.npy"),
                           str(tmp / "probs.npy")], capture_output=True, text=True,
                          timeout=300, cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, np.load(tmp / "probs.npy")


def test_the_onnx_file_runs_where_torch_and_hpo_cannot_be_imported(cnn_study, cnn_onnx,
                                                                   tmp_path):
    images, expected = reference(cnn_study)
    out, probs = run_without_torch(sys.executable, cnn_onnx, images, tmp_path,
                                   blocked=("torch", "hpo"))
    assert out.split()[:2] == ["blocked:torch", "blocked:hpo"]
    assert_agree(probs, expected)


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory) -> str:
    """A fresh venv holding only onnxruntime and numpy (the versions installed here, from
    the package index), made once per session."""
    import numpy
    import onnxruntime

    folder = tmp_path_factory.mktemp("bare") / "venv"
    venv.create(folder, with_pip=True)
    python = str(folder / "bin" / "python")
    done = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           f"onnxruntime=={onnxruntime.__version__}",
                           f"numpy=={numpy.__version__}"],
                          capture_output=True, text=True, timeout=600)
    offline = ("NewConnectionError", "Temporary failure in name resolution",
               "Network is unreachable", "Max retries exceeded")
    if done.returncode and any(s in done.stdout + done.stderr for s in offline):
        pytest.skip("the package index is not reachable: no fresh venv with onnxruntime")
    assert done.returncode == 0, done.stderr[-3000:]
    return python


@pytest.mark.e2e
def test_the_onnx_file_runs_in_a_fresh_venv_with_only_onnxruntime_and_numpy(
        cnn_study, cnn_onnx, bare_python, tmp_path):
    listed = subprocess.run([bare_python, "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert "onnxruntime" in names and not names & {"torch", "hpo"}
    for module in ("torch", "hpo"):
        gone = subprocess.run([bare_python, "-I", "-c", f"import {module}"],
                              capture_output=True, text=True, cwd=tmp_path)
        assert gone.returncode == 1 and "ModuleNotFoundError" in gone.stderr
    images, expected = reference(cnn_study)
    out, probs = run_without_torch(bare_python, cnn_onnx, images, tmp_path)
    assert out.strip() in {f"class{k}" for k in range(10)}
    assert_agree(probs, expected)


def hpo(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "hpo.cli", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_the_command_writes_the_model_and_still_exports_configs(cnn_study, tmp_path):
    done = hpo("export", cnn_study, "--model", "m.pt2", "--final", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "m.pt2").is_file() and "model → m.pt2" in done.stdout
    done = hpo("export", cnn_study, "--rank", 1, "-o", "config.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert read_config(tmp_path / "config.json") == read_config(cnn_study / "best.json")


def test_mistakes_are_one_line_and_write_nothing(cnn_study, tmp_path):
    cases = [
        (dict(out=tmp_path / "m.txt"), "m.txt: the suffix names the form: .onnx (ONNX) or "
                                       ".pt2"),
        (dict(out=tmp_path / "nowhere/m.onnx"), "nowhere: no such folder (--model)"),
        (dict(final=True, seed=7), "no completed retrain of seed 7 (completed seeds: 0)"),
        (dict(seed=0), "--seed picks a retrain in final/; pass --final with it"),
        (dict(final=True, fraction=0.5), "best-seed0.pt: trained on other images than these"),
        (dict(study=tmp_path), "not a study folder"),
        (dict(data=str(tmp_path / "gone")), "gone: does not exist (--data)"),
    ]
    for kwargs, message in cases:
        kwargs = {"study": cnn_study, "out": tmp_path / "m.onnx", **kwargs}
        with pytest.raises(ValueError) as info:
            export_model(kwargs.pop("study"), kwargs.pop("out"), **kwargs)
        assert message in str(info.value) and "\n" not in str(info.value), kwargs
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".onnx", ".pt2")]
    study = tmp_path / "unfinished"
    study.mkdir()
    (study / "study.json").write_text("{}")
    with pytest.raises(ExportError, match="no best.json yet"):
        export_model(study, tmp_path / "m.onnx")
