"""Classify the user's own images with a trained run, prepared the way the data set's images were."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import ImageError
from .evaluation import find_checkpoint, load_model


def read_gray(path: Path) -> torch.Tensor:
    """The image as float grayscale [H, W] in 0..255; transparency is laid on white."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file; give the path of a PNG or JPEG image.")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                im = Image.new("RGBA", rgba.size, "white")
                im.alpha_composite(rgba)
            gray = im.convert("L")
    except Exception as e:  # PIL reports damaged files through many classes (even SyntaxError)
        raise ImageError(f"{path}: is not an image that can be read ({type(e).__name__}); "
                         "give a PNG or JPEG of a single digit or garment.") from None
    return torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).view(
        gray.height, gray.width).float()


def prepare(gray: torch.Tensor, size: tuple[int, int], fill: float, centre_of_mass: bool) -> torch.Tensor:
    """Light-on-dark, cropped to the ink, scaled to fill*size and placed on a size canvas (0..255).

    MNIST: fill=20/28 and centred on the centre of mass; Fashion-MNIST: fill=1, centred box.
    """
    h, w = gray.shape
    border = torch.cat([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = border.median()
    ink = background - gray if background > 127 else gray - background  # dark-on-light is inverted
    ink = ink.clamp(min=0)
    top = ink.max()
    if top < 16:
        raise ValueError("the image is blank: no digit or garment stands out from its background")
    ink = ink / top * 255
    ink[ink < 0.1 * 255] = 0  # scanner and JPEG noise in the background
    rows = torch.nonzero(ink.sum(1) > 0).flatten()
    cols = torch.nonzero(ink.sum(0) > 0).flatten()
    ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    H, W = size
    scale = min(fill * H / ink.shape[0], fill * W / ink.shape[1])
    new_h = max(1, min(H, round(ink.shape[0] * scale)))
    new_w = max(1, min(W, round(ink.shape[1] * scale)))
    patch = F.interpolate(ink[None, None], size=(new_h, new_w), mode="bilinear",
                          antialias=True, align_corners=False)[0, 0].clamp(0, 255)
    if centre_of_mass:
        mass = patch.sum()
        cy = (patch.sum(1) * torch.arange(new_h)).sum() / mass
        cx = (patch.sum(0) * torch.arange(new_w)).sum() / mass
        y0 = int(round((H - 1) / 2 - cy.item()))
        x0 = int(round((W - 1) / 2 - cx.item()))
    else:
        y0, x0 = (H - new_h) // 2, (W - new_w) // 2
    y0, x0 = min(max(y0, 0), H - new_h), min(max(x0, 0), W - new_w)
    canvas = torch.zeros(H, W)
    canvas[y0:y0 + new_h, x0:x0 + new_w] = patch
    return canvas


def prepare_for(gray: torch.Tensor, info: dict) -> torch.Tensor:
    """A model's input [C, H, W] from a grayscale image, as its data set was made and normalised."""
    channels, height, width = info["image_shape"]
    if info["dataset"] == "fashion-mnist":
        canvas = prepare(gray, (height, width), 1.0, centre_of_mass=False)
    else:
        canvas = prepare(gray, (height, width), 20 / 28, centre_of_mass=True)
    x = (canvas / 255 - info["mean"]) / info["std"]
    return x.expand(channels, height, width)


@torch.inference_mode()
def predict(target: Path, images: list[Path], which: str | None = None, top: int = 3,
            trust_run_code: bool = False) -> list[dict]:
    """Top classes with probabilities for each image; a file that fails gets an error instead."""
    path, _ = find_checkpoint(target, which)
    model, ckpt, _ = load_model(path, trust_run_code)
    info = ckpt["data"]
    names = list(info["class_names"])
    results = []
    for image in images:
        try:
            x = prepare_for(read_gray(image), info)
        except ImageError as e:
            results.append({"file": str(image), "error": str(e)})
            continue
        except ValueError as e:
            results.append({"file": str(image), "error": f"{image}: {e}."})
            continue
        probs = model(x[None]).softmax(1)[0]
        p, idx = probs.topk(min(top, len(names)))
        results.append({"file": str(image), "top": [
            {"class": int(i), "name": names[int(i)], "probability": float(q)}
            for q, i in zip(p, idx)]})
    return results
