"""Decode once: the cost of evaluation image loading with and without medpeft's cache, on MedFMC-sized images.

A bench evaluates the same validation list every epoch of every run and the test list once per run. This script
writes ``--images`` noise PNGs of ``--source-size`` px (ChestDR images are 2048-4000 px, Endo frames ~1000 px) and
times ``--passes`` passes of the evaluation dataset at ``--img-size``: decoded every pass (``--no-decode-once``) or
through :class:`medpeft.data.ResizedImageCache` (first pass decodes and stores, later passes reuse).

Run: ``python benchmarks/decode_once.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np
from PIL import Image

from medpeft.data import ResizedImageCache
from medpeft.data.dataset import eval_dataset
from medpeft.data.samples import Samples


@click.command()
@click.option("--images", default=40, show_default=True)
@click.option("--source-size", default=1024, show_default=True)
@click.option("--img-size", default=224, show_default=True)
@click.option("--passes", default=5, show_default=True, help="Evaluations of the list (e.g. epochs + test).")
def main(images, source_size, img_size, passes):
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(images):
            path = Path(tmp) / f"{i:04d}.png"
            Image.fromarray(rng.integers(0, 256, (source_size, source_size), np.uint8)).save(path)
            paths.append(str(path))
        samples = Samples([Path(p).name for p in paths], paths, np.zeros(images, np.int64))
        timings = {}
        for name, cache in (("decoded every pass", None), ("decode once", ResizedImageCache(Path(tmp) / "cache"))):
            dataset, seconds = eval_dataset(samples, img_size, cache), []
            for _ in range(passes):
                start = time.perf_counter()
                for i in range(len(dataset)):
                    dataset[i]
                seconds.append(time.perf_counter() - start)
            timings[name] = seconds
            click.echo(
                f"{name}: {sum(seconds):.2f} s for {passes} passes over {images} images "
                f"({source_size} px -> {img_size} px); per pass " + ", ".join(f"{s:.2f}" for s in seconds)
            )
        ratio = sum(timings["decode once"]) / sum(timings["decoded every pass"])
        click.echo(f"decode once / decoded every pass: {ratio:.3f}")


if __name__ == "__main__":
    main()
