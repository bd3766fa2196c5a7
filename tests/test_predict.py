"""`hpo predict`: image files and folders classified by an exported model in onnxruntime, a
line each, unreadable files named and skipped, progress shown, a summary; the classes and
probabilities are those hpo's own path gives the same files."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_images, run_in_terminal
from hpo import predict
from hpo.config import read_config
from hpo.export import export_model
from hpo.model import build_model
from hpo.sources import convert_image
from hpo.study import load_study_data
from hpo.train import preprocess, to_device

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def model(cnn_study, tmp_path_factory) -> Path:
    return export_model(cnn_study, tmp_path_factory.mktemp("predict") / "cnn.onnx")


@pytest.fixture
def photos(tmp_path) -> Path:
    """photos/: images of other sizes, modes and formats, one in a subfolder, one damaged,
    one not an image; beside it extra.bmp."""
    x, _ = make_images(6, size=(45, 37), seed=3)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(x[0]).save(folder / "sub/a.png")
    Image.fromarray(x[1]).resize((64, 48)).save(folder / "b.jpg", quality=90)
    Image.fromarray(x[2]).convert("L").save(folder / "c.png")
    Image.fromarray(x[3]).convert("RGBA").save(folder / "d.png")
    Image.fromarray(x[4]).resize((32, 32)).save(folder / "e.webp")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (folder / "notes.txt").write_text("not an image, not a suffix hpo reads")
    Image.fromarray(x[5]).save(tmp_path / "extra.bmp")
    return folder


def expected(study: Path, files: list[Path]) -> list[np.ndarray]:
    """Each file's probabilities by hpo's own path: decoded as hpo.sources decodes, then the
    network as its trials evaluated it."""
    _, data = load_study_data(study)
    config = read_config(study / "best.json")
    net = build_model(config, data.image_shape, data.num_classes)
    net.load_state_dict(torch.load(study / "best.pt", weights_only=True))
    net.eval()
    x = np.stack([np.asarray(convert_image(Image.open(f), "RGB", (32, 32))) for f in files])
    with torch.no_grad():
        batch = preprocess(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(),
                           to_device(data, torch.device("cpu")), config, torch.float32)
        return list(torch.softmax(net(batch), dim=1).numpy())


def hpo(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "hpo.cli", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


def test_files_and_folders_are_classified_as_hpo_would_and_damaged_ones_skipped(
        cnn_study, model, photos):
    done = hpo("predict", model, "photos", "extra.bmp", cwd=photos.parent)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    files = ["photos/b.jpg", "photos/c.png", "photos/d.png", "photos/e.webp",
             "photos/sub/a.png", "extra.bmp"]
    assert [ln.split("  ")[0] for ln in lines] == files
    names = [f"class{k}" for k in range(10)]
    for line, probs in zip(lines, expected(cnn_study, [photos.parent / f for f in files])):
        _, name, p = line.split("  ")
        assert name == names[int(probs.argmax())]
        assert abs(float(p) - probs.max()) <= 1e-4 + 5e-5  # printed to 4 decimals
    errors = done.stderr.splitlines()
    assert errors[0].startswith("photos/broken.png: cannot read image, skipped "
                                "(UnidentifiedImageError")
    assert errors[-1].startswith("hpo predict: 6 images, 1 unreadable, ")
    assert errors[-1].endswith("img/s (CPUExecutionProvider)") and len(errors) == 2


def test_csv_with_the_top_classes(model, photos):
    done = hpo("predict", model, photos, "--csv", "--top", 3, "--batch-size", 2,
               cwd=photos.parent)
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0] == ["file", "class", "probability", "class_2", "probability_2", "class_3",
                       "probability_3"]
    assert len(rows) == 6 and all(len(r) == 7 for r in rows)
    for row in rows[1:]:
        p = [float(v) for v in row[2::2]]
        assert p == sorted(p, reverse=True) and sum(p) <= 1.0001
        assert len(set(row[1::2])) == 3


def test_batches_keep_the_order_and_the_results(model, photos):
    files = predict.find_images([photos])
    net = predict.Model(model)
    one = list(predict.classify(net, files, top=2, batch=64))
    small = list(predict.classify(net, files, top=2, batch=2, workers=2))
    assert [r.file for r in small] == files and [r.error is None for r in small].count(0) == 1
    for a, b in zip(one, small):
        assert a.error == b.error and [c for c, _ in a.top] == [c for c, _ in b.top]
        assert np.allclose([p for _, p in a.top], [p for _, p in b.top], atol=1e-6)


def test_a_log_gets_a_line_now_and_then(model, photos, monkeypatch, capsys):
    monkeypatch.setattr(predict, "PROGRESS_EVERY_S", 0.0)
    err = io.StringIO()
    assert predict.print_predictions(model, [photos], err=err) == 0
    notes = [ln for ln in err.getvalue().splitlines() if "/6 images" in ln]
    assert notes and notes[-1].startswith("hpo predict: 6/6 images, ")
    assert len(capsys.readouterr().out.splitlines()) == 5


def test_a_terminal_gets_a_progress_bar_on_long_folders(model, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    x, _ = make_images(predict.LONG, size=8)
    for i, img in enumerate(x):
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(ROOT))
        screen = run_in_terminal([sys.executable, "-m", "hpo.cli", "predict", model, folder],
                                 cwd=tmp_path)
    assert f"{predict.LONG}/{predict.LONG}" in screen
    assert f"hpo predict: {predict.LONG} images, 0 unreadable" in screen
    assert screen.count("many/0255.png") == 1


def test_mistakes_are_one_line_and_nothing_readable_is_status_1(model, photos, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    cases = [
        ([model, "nowhere"], "nowhere: no such file or folder"),
        ([model, "empty"], "empty: no image files here (.png, .jpg, .jpeg, .bmp, .webp)"),
        (["model.onnx", photos], "model.onnx: not an ONNX model onnxruntime can load"),
        (["missing.onnx", photos], "missing.onnx: no such model file"),
        ([model, photos, "--top", 0], "argument --top: must be 1 or more, got 0"),
    ]
    for args, message in cases:
        done = hpo("predict", *args, cwd=tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (args, done.stderr)
        assert message in lines[0] and not done.stdout, (args, lines)
    done = hpo("predict", model, photos / "broken.png", cwd=tmp_path)
    assert done.returncode == 1 and not done.stdout
    assert "hpo predict: 0 images, 1 unreadable" in done.stderr


def test_a_model_without_hpos_metadata_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "plain.onnx")
    with pytest.raises(predict.PredictError, match="plain.onnx: not a model hpo exported"):
        predict.Model(tmp_path / "plain.onnx")
