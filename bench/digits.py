"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes, shipped inside the package:
nothing is downloaded) as a user's folder of class folders, and the space a user would search
it with: spaces/imagefolder.py as shipped, with only `image_size` and `channels` set, as its
docstring tells a user to do.

    python bench/digits.py OUT     # OUT/train/<digit>/*.png, OUT/test/<digit>/*.png

A fixed-seed, class-stratified fifth of the images is held out as test/: the search never
sees it, the retrain of each search's chosen config is tested on it. Nothing here is kept in
git: bench/search_quality.py --dataset digits writes both into its work folder.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TEST_FRACTION = 0.2
SPLIT_SEED = 0
IMAGE_SIZE = 16  # the 8x8 images, upscaled (bilinear) when hpo decodes them: 4 stages fit


def write_digits(root: Path) -> Path:
    """Write root/train/<digit>/NNNN.png and root/test/<digit>/NNNN.png (8x8 grayscale PNGs,
    0..16 scaled to 0..255) and return root. A folder already complete is left as it is."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = Path(root)
    done = root / ".complete"
    if done.is_file():
        return root
    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).clip(0, 255).astype(np.uint8)
    index = np.arange(len(pixels))
    train, test = train_test_split(index, test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                   stratify=digits.target)
    for split, rows in (("train", train), ("test", test)):
        for i in sorted(rows):
            folder = root / split / str(int(digits.target[i]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i]).save(folder / f"{i:04d}.png")
    done.write_text(f"{len(train)} train, {len(test)} test\n")
    return root


def write_space(path: Path, image_size: int = IMAGE_SIZE, channels: int = 1) -> Path:
    """Write spaces/imagefolder.py to `path` with `image_size` and `channels` set, and nothing
    else changed. Raises ValueError if the file no longer has those two lines."""
    text = (REPO / "spaces" / "imagefolder.py").read_text()
    for name, value in (("image_size", image_size), ("channels", channels)):
        text, n = re.subn(rf"^{name} = [^\n]*$",
                          f"{name} = {value}  # set by bench/digits.py for the 8x8 digits",
                          text, count=1, flags=re.M)
        if n != 1:
            raise ValueError(f"spaces/imagefolder.py: no line `{name} = ...` to set")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the folder to write")
    p.add_argument("--space", type=Path, help="also write the space file here")
    args = p.parse_args(argv)
    write_digits(args.out)
    print(f"{args.out}: {(args.out / '.complete').read_text().strip()}")
    if args.space:
        write_space(args.space)
        print(f"{args.space}: spaces/imagefolder.py with image_size {IMAGE_SIZE}, channels 1")


if __name__ == "__main__":
    main()
