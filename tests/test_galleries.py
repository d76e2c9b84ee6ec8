"""The BrainSCUBA and MindBridge gallery pages open in a real browser (chromium, headless) from the file system
with every image loaded, and hold their images themselves, as the single-file report needs. (BrainDiVE's pages:
tests/test_braindive.py; the report: tests/test_workflow.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from browser import Browser, broken_images
from PIL import Image

from brainatt.mindbridge.recon import write_page
from brainatt.viz.scuba import write_gallery

RNG = np.random.default_rng(0)


def _images(n: int) -> np.ndarray:
    return RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _check(chromium: Browser, page: Path, n_images: int) -> None:
    opened = chromium.open(page, page.with_name("screenshot.png"))
    print(f"gallery screenshot: {page.with_name('screenshot.png')}")
    assert len(opened["images"]) == n_images and not broken_images(opened)
    assert all(image["src"].startswith("data:image/png") for image in opened["images"])


def test_scuba_gallery_opens_with_every_image(tmp_path: Path, chromium: Browser) -> None:
    runs, tables = {}, {}
    for subject in ("subj01", "subj02"):
        run = tmp_path / subject / "run"
        (run / "images").mkdir(parents=True)
        rows = []
        for source in ("faces", "food"):
            for i, image in enumerate(_images(2)):
                Image.fromarray(image).save(run / "images" / f"{source}_{i}.png")
                rows.append({"source": source, "target": source, "image": i, "prompt": f"a {source}", "predicted": 1.0})
        runs[subject], tables[subject] = run, (pd.DataFrame(), pd.DataFrame(rows))
    out = tmp_path / "galleries/scuba/index.html"
    out.parent.mkdir(parents=True)
    write_gallery(runs, tables, out)
    _check(chromium, out, 8)


def test_mindbridge_page_opens_with_every_image(tmp_path: Path, chromium: Browser) -> None:
    ids = np.array([3, 7, 11])
    out = tmp_path / "index.html"
    write_page(out, "MindBridge reconstructions: subj01, bridge", {"pixcorr": 0.1}, ids, _images(3), _images(3),
               ["face / face", "food / body", "place / place"])  # fmt: skip
    _check(chromium, out, 6)
    assert "food / body" in out.read_text()
