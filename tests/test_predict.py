"""mnistlab predict: user images of any size and polarity are prepared like the data set and classified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import FASHION_DIR, tiny_config_dict, write_idx
from mnistlab.cli import app
from mnistlab.config import config_from_dict
from mnistlab.predict import prepare
from mnistlab.training import fit

runner = CliRunner()


def shapes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-like 28x28 images of four shapes (-, |, square ring, X) in a 20x20 box, jittered."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    images = torch.zeros(n, 28, 28)
    r = torch.arange(20)
    for i, c in enumerate(labels.tolist()):
        t = int(torch.randint(2, 5, (1,), generator=g))
        box = torch.zeros(20, 20)
        if c == 0:
            box[10 - t // 2:10 - t // 2 + t, :] = 1
        elif c == 1:
            box[:, 10 - t // 2:10 - t // 2 + t] = 1
        elif c == 2:
            box[:t, :] = box[-t:, :] = box[:, :t] = box[:, -t:] = 1
        else:
            d = (r[:, None] - r[None, :]).abs()
            a = (r[:, None] + r[None, :] - 19).abs()
            box[(d < t / 2 + 0.5) | (a < t / 2 + 0.5)] = 1
        dy, dx = torch.randint(-1, 2, (2,), generator=g).tolist()
        images[i, 4 + dy:24 + dy, 4 + dx:24 + dx] = box * (200 + 55 * torch.rand(1, generator=g))
    return images.to(torch.uint8), labels.to(torch.uint8)


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    base = tmp_path_factory.mktemp("predict")
    data = base / "shapes"
    data.mkdir()
    for split, n, seed in (("train", 600, 1), ("t10k", 40, 2)):
        images, labels = shapes(n, seed)
        write_idx(data / f"{split}-images-idx3-ubyte", images)
        write_idx(data / f"{split}-labels-idx1-ubyte", labels)
    cfg = tiny_config_dict(data, base / "runs", model={"kind": "dense", "hidden": [32]},
                           train={"epochs": 4})
    run = Path(fit(config_from_dict(cfg))["run_dir"])
    return run, *shapes(40, 2)


def render(image: torch.Tensor, path: Path, scale: int, invert: bool, margin: int) -> Path:
    """A test sample as a user would photograph it: bigger, off-centre, maybe dark-on-light."""
    a = image.numpy()
    im = Image.fromarray(255 - a if invert else a).resize(
        (image.shape[1] * scale, image.shape[0] * scale), Image.BICUBIC)
    canvas = Image.new("L", (im.width + 2 * margin, im.height + margin), 255 if invert else 0)
    canvas.paste(im, (margin // 2, margin // 3))
    canvas.convert("RGB").save(path)
    return path


def test_prepare_scales_the_ink_into_20x20_centred_on_its_mass():
    img = torch.full((300, 200), 240.0)  # dark-on-light, a 60x30 blob far from the centre
    img[20:80, 10:40] = 10.0
    out = prepare(img, (28, 28), 20 / 28, centre_of_mass=True)
    rows = torch.nonzero(out.sum(1) > 0).flatten()
    cols = torch.nonzero(out.sum(0) > 0).flatten()
    assert len(rows) == 20 and len(cols) == 10
    mass = out.sum()
    cy = (out.sum(1) * torch.arange(28)).sum() / mass
    cx = (out.sum(0) * torch.arange(28)).sum() / mass
    assert abs(cy - 13.5) <= 0.5 and abs(cx - 13.5) <= 0.5
    assert out.max() == pytest.approx(255, abs=1)


def test_predict_returns_the_labels_of_rendered_test_samples(shapes_run, tmp_path):
    run, images, labels = shapes_run
    files = [render(images[i], tmp_path / f"s{i}.{'png' if i % 2 else 'jpg'}", scale=2 + i % 4,
                    invert=bool(i % 3), margin=10 * (i % 5)) for i in range(12)]
    result = runner.invoke(app, ["predict", str(run), *map(str, files), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [r["top"][0]["class"] for r in out] == labels[:12].tolist()
    for r in out:
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6


def test_a_file_that_is_not_an_image_does_not_stop_the_others(shapes_run, tmp_path):
    run, images, labels = shapes_run
    good = render(images[0], tmp_path / "good.png", 3, True, 0)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    blank = tmp_path / "blank.png"
    Image.new("L", (40, 40), 255).save(blank)
    result = runner.invoke(app, ["predict", str(run), str(text), str(good), str(blank),
                                 str(tmp_path / "missing.png")])
    assert result.exit_code == 2
    assert "notes.png: is not an image" in result.output
    assert "blank.png: the image is blank" in result.output
    assert "missing.png: no such file" in result.output
    assert "good.png" in result.output and "Traceback" not in result.output


def test_predict_refuses_a_foreign_checkpoint(tmp_path):
    foreign = tmp_path / "model.pt"
    torch.save({"state": torch.ones(2)}, foreign)
    image = tmp_path / "x.png"
    Image.new("L", (10, 10), 0).save(image)
    result = runner.invoke(app, ["predict", str(foreign), str(image)])
    assert result.exit_code == 2 and "not a mnistlab checkpoint" in result.output


@pytest.mark.realdata
def test_predict_on_rendered_fashion_mnist_samples(tmp_path):
    if not FASHION_DIR.is_dir():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    from mnistlab.data import read_split

    cfg = tiny_config_dict(FASHION_DIR, tmp_path / "runs", model={"kind": "dense", "hidden": [64]},
                           data={"name": "fashion-mnist", "root": None, "train_samples": 6000,
                                 "test_samples": 1000}, train={"epochs": 3, "batch_size": 64})
    run = Path(fit(config_from_dict(cfg))["run_dir"])
    images, labels = read_split("fashion-mnist", FASHION_DIR, "test")
    files = [render(images[i], tmp_path / f"f{i}.png", 4, bool(i % 2), 12) for i in range(20)]
    result = runner.invoke(app, ["predict", str(run), *map(str, files), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    hits = sum(r["top"][0]["class"] == int(y) for r, y in zip(out, labels[:20]))
    assert hits >= 16  # the model itself scores about 80-85% on this test set
    assert {t["name"] for r in out for t in r["top"]} <= {
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
        "Bag", "Ankle boot"}
