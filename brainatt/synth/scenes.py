"""Procedural nsd-synth scenes: images, per-category masks and captions.

A scene is an optional place layout (the *place* category) behind zero to three objects of the other four
categories (face, body, word, food), each at a random position, size and colour. Scenes are drawn at twice the
output size with PIL and downsampled, so edges are anti-aliased. The per-category masks are the ground truth the
world's category detector is trained on; the caption names every category present with its position.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CATEGORIES: tuple[str, ...] = ("face", "body", "place", "word", "food")
OBJECT_CATEGORIES: tuple[str, ...] = ("face", "body", "word", "food")
PLACES: tuple[str, ...] = ("kitchen", "street", "corridor", "field")
WORDS: tuple[str, ...] = ("stop", "open", "cafe", "exit", "hello", "sale", "park", "taxi")
FOODS: tuple[str, ...] = ("a plate of food", "some fruit", "a pizza")
# The generator's version lives in a JSON file so the workflow can read it at parse time without importing the package.
GENERATOR_FILE = Path(__file__).with_name("generator.json")
GENERATOR_VERSION: int = json.loads(GENERATOR_FILE.read_text())["version"]
# Words that name each category in a caption: the one list that captioning metrics use.
CATEGORY_WORDS: dict[str, tuple[str, ...]] = {
    "face": ("face",),
    "body": ("body",),
    "place": PLACES,
    "word": ("word",),
    "food": ("food", "fruit", "pizza"),
}


@dataclass(frozen=True)
class SceneObject:
    category: str
    cx: float  # centre, fraction of the image width (0 = left)
    cy: float  # centre, fraction of the image height (0 = top)
    size: float  # height, fraction of the image
    color: tuple[int, int, int]
    variant: int  # which sub-type (food kind, word, pose) the object takes
    tilt: float  # rotation-like jitter in [-1, 1]


@dataclass(frozen=True)
class Scene:
    place: str | None
    background: tuple[int, int, int]
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)
    seed: int = 0

    def categories(self) -> set[str]:
        present = {o.category for o in self.objects}
        if self.place is not None:
            present.add("place")
        return present


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw a scene description: each category appears in roughly 40% of scenes."""
    place = PLACES[rng.integers(len(PLACES))] if rng.random() < 0.45 else None
    n_objects = int(rng.choice([0, 1, 2, 3], p=[0.0, 0.35, 0.4, 0.25] if place is None else [0.2, 0.4, 0.3, 0.1]))
    objects = []
    cats = list(rng.choice(OBJECT_CATEGORIES, size=n_objects, replace=False)) if n_objects else []
    for cat in cats:
        size = float(rng.uniform(0.22, 0.42)) if cat != "body" else float(rng.uniform(0.35, 0.6))
        half = size / 2
        objects.append(
            SceneObject(
                category=str(cat),
                cx=float(rng.uniform(half * 0.8, 1 - half * 0.8)),
                cy=float(rng.uniform(half * 0.8, 1 - half * 0.8)),
                size=size,
                color=tuple(int(c) for c in rng.integers(30, 226, size=3)),
                variant=int(rng.integers(8)),
                tilt=float(rng.uniform(-1, 1)),
            )
        )
    background = tuple(int(c) for c in rng.integers(60, 200, size=3))
    return Scene(place=place, background=background, objects=tuple(objects), seed=int(rng.integers(2**31)))


def _position_phrase(obj: SceneObject) -> str:
    dx, dy = obj.cx - 0.5, obj.cy - 0.5
    if max(abs(dx), abs(dy)) < 0.12:
        return "in the center"
    if abs(dx) >= abs(dy):
        return "on the left" if dx < 0 else "on the right"
    return "at the top" if dy < 0 else "at the bottom"


def _object_phrase(obj: SceneObject) -> str:
    size = "small " if obj.size < 0.28 else ("large " if obj.size > 0.38 and obj.category != "body" else "")
    if obj.category == "face":
        noun = f"a {size}face"
    elif obj.category == "body":
        noun = "a body"
    elif obj.category == "word":
        noun = f'the word "{WORDS[obj.variant % len(WORDS)]}"'
    else:
        noun = FOODS[obj.variant % len(FOODS)]
    return f"{noun} {_position_phrase(obj)}"


def caption(scene: Scene) -> str:
    """One sentence naming every category present, e.g. 'a face on the left and a pizza in a kitchen'."""
    parts = [_object_phrase(o) for o in scene.objects]
    text = " and ".join(parts) if parts else "an empty scene"
    if scene.place is not None:
        text += f" in a {scene.place}" if parts else f" of a {scene.place}"
    elif parts:
        text += " on a plain background"
    return text


# ------------------------------------------------------------------------------------------------ rendering
def _shade(color: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * f, 0, 255)) for c in color)


def _draw_place(draw: ImageDraw.ImageDraw, place: str, s: int, rng: np.random.Generator) -> None:
    wall = tuple(int(c) for c in rng.integers(90, 230, size=3))
    floor = _shade(wall, 0.55)
    if place == "kitchen":
        horizon = int(s * rng.uniform(0.55, 0.7))
        draw.rectangle([0, 0, s, horizon], fill=wall)
        draw.rectangle([0, horizon, s, s], fill=floor)
        for k in range(int(rng.integers(3, 6))):  # cupboards along the wall
            x0 = int(s * k / 5 + rng.integers(0, s // 20))
            draw.rectangle(
                [x0, int(horizon * 0.15), x0 + s // 6, int(horizon * 0.45)],
                fill=_shade(wall, 0.7),
                outline=(40, 40, 40),
                width=2,
            )
        draw.rectangle([0, int(horizon * 0.8), s, horizon], fill=_shade(wall, 0.8), outline=(40, 40, 40), width=2)
    elif place == "street":
        horizon = int(s * rng.uniform(0.45, 0.6))
        draw.rectangle([0, 0, s, horizon], fill=(120, 170, 230))
        draw.rectangle([0, horizon, s, s], fill=(90, 90, 95))
        x = 0
        while x < s:
            w = int(s * rng.uniform(0.15, 0.3))
            h = int(horizon * rng.uniform(0.4, 0.9))
            col = tuple(int(c) for c in rng.integers(80, 200, size=3))
            draw.rectangle([x, horizon - h, x + w, horizon], fill=col, outline=(30, 30, 30), width=2)
            for wy in range(horizon - h + 6, horizon - 8, 14):
                for wx in range(x + 5, x + w - 8, 12):
                    draw.rectangle([wx, wy, wx + 5, wy + 6], fill=(240, 230, 150))
            x += w
        draw.line([0, int(s * 0.85), s, int(s * 0.85)], fill=(240, 240, 240), width=3)
    elif place == "corridor":
        draw.rectangle([0, 0, s, s], fill=wall)
        vx, vy = s * rng.uniform(0.4, 0.6), s * rng.uniform(0.4, 0.6)
        d = s * rng.uniform(0.12, 0.2)
        inner = [vx - d, vy - d, vx + d, vy + d]
        draw.polygon([(0, s), (s, s), (inner[2], inner[3]), (inner[0], inner[3])], fill=floor)
        draw.polygon([(0, 0), (s, 0), (inner[2], inner[1]), (inner[0], inner[1])], fill=_shade(wall, 1.15))
        draw.rectangle(inner, fill=_shade(wall, 0.4))
        for corner in [(0, 0), (s, 0), (0, s), (s, s)]:
            draw.line(
                [
                    corner,
                    (inner[0] if corner[0] == 0 else inner[2], inner[1] if corner[1] == 0 else inner[3]),
                ],
                fill=(30, 30, 30),
                width=2,
            )
    else:  # field
        horizon = int(s * rng.uniform(0.35, 0.55))
        draw.rectangle([0, 0, s, horizon], fill=(140, 190, 240))
        draw.rectangle([0, horizon, s, s], fill=(70, 150, 60))
        for _ in range(int(rng.integers(2, 5))):
            tx = int(rng.integers(0, s))
            th = int(s * rng.uniform(0.1, 0.25))
            draw.rectangle([tx - 2, horizon - th // 2, tx + 2, horizon + 4], fill=(90, 60, 30))
            draw.ellipse([tx - th // 3, horizon - th, tx + th // 3, horizon - th // 3], fill=(40, 110, 40))


def _draw_plain(draw: ImageDraw.ImageDraw, color: tuple[int, int, int], s: int, rng: np.random.Generator) -> None:
    draw.rectangle([0, 0, s, s], fill=color)
    for _ in range(int(rng.integers(0, 6))):  # faint blobs so the background is not one colour
        x, y, r = rng.integers(0, s), rng.integers(0, s), rng.integers(s // 12, s // 4)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=_shade(color, rng.uniform(0.85, 1.15)))


def _font(px: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(px, 6))


def _draw_object(draw: ImageDraw.ImageDraw, o: SceneObject, s: int, rng: np.random.Generator) -> None:
    cx, cy, h = o.cx * s, o.cy * s, o.size * s
    if o.category == "face":
        skin = (int(150 + 0.4 * o.color[0]) % 256, int(110 + 0.3 * o.color[1]), int(80 + 0.25 * o.color[2]))
        w = h * (0.72 + 0.1 * o.tilt)
        draw.ellipse([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], fill=skin, outline=_shade(skin, 0.6))
        hair = _shade(o.color, 0.4)
        draw.chord([cx - w / 2, cy - h / 2, cx + w / 2, cy + h * 0.1], 180, 360, fill=hair)
        ey, ex, er = cy - h * 0.05, w * (0.2 + 0.04 * o.tilt), h * 0.07
        for sx in (-1, 1):
            draw.ellipse([cx + sx * ex - er * 1.4, ey - er, cx + sx * ex + er * 1.4, ey + er], fill=(250, 250, 250))
            draw.ellipse(
                [cx + sx * ex - er * 0.6, ey - er * 0.6, cx + sx * ex + er * 0.6, ey + er * 0.6],
                fill=(20, 20, 20),
            )
        draw.line([cx, ey + h * 0.05, cx - w * 0.05, cy + h * 0.15], fill=_shade(skin, 0.6), width=max(1, s // 64))
        draw.arc(
            [cx - w * 0.2, cy + h * 0.12, cx + w * 0.2, cy + h * 0.32],
            20,
            160,
            fill=(150, 30, 40),
            width=max(2, s // 48),
        )
    elif o.category == "body":
        lw = max(3, int(h * 0.09))
        head = h * 0.11
        neck = cy - h / 2 + 2 * head
        hip = cy + h * 0.08
        draw.ellipse([cx - head, cy - h / 2, cx + head, neck], fill=(200, 160, 130))
        draw.rounded_rectangle([cx - h * 0.13, neck, cx + h * 0.13, hip], radius=lw // 2, fill=o.color)
        swing = 0.25 * o.tilt
        for sx in (-1, 1):
            draw.line(
                [cx + sx * h * 0.12, neck + lw, cx + sx * h * (0.28 + swing * sx), hip - h * 0.05],
                fill=o.color,
                width=lw,
            )
            draw.line(
                [cx + sx * h * 0.07, hip, cx + sx * h * (0.12 + 0.5 * swing * sx), cy + h / 2],
                fill=_shade(o.color, 0.5),
                width=lw,
            )
    elif o.category == "word":
        text = WORDS[o.variant % len(WORDS)]
        font = _font(int(h * 0.5))
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        tw, th = x1 - x0, y1 - y0
        pad = h * 0.15
        light = o.color[0] + o.color[1] + o.color[2] > 380
        board = o.color if o.variant % 2 else (235, 235, 225)
        ink = (20, 20, 20) if (light or not o.variant % 2) else (245, 245, 245)
        draw.rectangle([cx - tw / 2 - pad, cy - th / 2 - pad, cx + tw / 2 + pad, cy + th / 2 + pad], fill=board)
        draw.text((cx - tw / 2 - x0, cy - th / 2 - y0), text, fill=ink, font=font)
    else:  # food
        kind = o.variant % len(FOODS)
        r = h / 2
        if kind == 0:  # plate
            draw.ellipse([cx - r, cy - r * 0.7, cx + r, cy + r * 0.7], fill=(245, 245, 240), outline=(150, 150, 150))
            for _ in range(5):
                fx, fy = cx + rng.uniform(-0.5, 0.5) * r, cy + rng.uniform(-0.3, 0.3) * r
                fr = r * rng.uniform(0.15, 0.3)
                col = tuple(int(c) for c in rng.integers(60, 240, size=3))
                draw.ellipse([fx - fr, fy - fr * 0.7, fx + fr, fy + fr * 0.7], fill=col)
        elif kind == 1:  # fruit
            for _ in range(3):
                fx, fy, fr = cx + rng.uniform(-0.45, 0.45) * r, cy + rng.uniform(-0.3, 0.3) * r, r * 0.45
                col = [(220, 40, 30), (240, 150, 20), (120, 200, 40)][int(rng.integers(3))]
                draw.ellipse([fx - fr, fy - fr, fx + fr, fy + fr], fill=col, outline=_shade(col, 0.6))
                draw.line([fx, fy - fr, fx + fr * 0.2, fy - fr * 1.35], fill=(90, 60, 20), width=max(2, s // 64))
        else:  # pizza
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(210, 150, 70))
            draw.ellipse([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=(220, 60, 40))
            for _ in range(7):
                px, py = cx + rng.uniform(-0.6, 0.6) * r, cy + rng.uniform(-0.6, 0.6) * r
                draw.ellipse([px - r * 0.1, py - r * 0.1, px + r * 0.1, py + r * 0.1], fill=(250, 230, 160))


def render(scene: Scene, size: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw a scene.

    Returns the image ``(size, size, 3) uint8`` and category masks ``(len(CATEGORIES), grid, grid) float32``:
    the visible fraction of each grid cell covered by each category.
    """
    s = 2 * size
    rng = np.random.default_rng(scene.seed)
    img = Image.new("RGBA", (s, s))
    if scene.place is not None:
        _draw_place(ImageDraw.Draw(img), scene.place, s, rng)
    else:
        _draw_plain(ImageDraw.Draw(img), scene.background, s, rng)
    # Label image: which category owns each pixel, later objects occluding earlier ones.
    owner = np.full((s, s), CATEGORIES.index("place") if scene.place else -1, dtype=np.int8)
    for o in scene.objects:
        layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
        _draw_object(ImageDraw.Draw(layer), o, s, rng)
        owner[np.asarray(layer)[..., 3] > 0] = CATEGORIES.index(o.category)
        img.alpha_composite(layer)
    image = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
    cell = s // grid
    masks = np.stack([(owner == k) for k in range(len(CATEGORIES))]).astype(np.float32)
    masks = masks[:, : cell * grid, : cell * grid].reshape(len(CATEGORIES), grid, cell, grid, cell).mean((2, 4))
    return image, masks


def render_many(scenes: list[Scene], size: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Render a list of scenes into stacked images ``(N,H,W,3)`` and masks ``(N,K,G,G)``."""
    images = np.empty((len(scenes), size, size, 3), dtype=np.uint8)
    masks = np.empty((len(scenes), len(CATEGORIES), grid, grid), dtype=np.float32)
    for i, sc in enumerate(scenes):
        images[i], masks[i] = render(sc, size, grid)
    return images, masks


def generator_fingerprint(image_size: int) -> str:
    """What models trained on nsd-synth scenes record: the generator's version and the image size, hashed.

    It changes when `GENERATOR_VERSION` is bumped or the image size changes; nothing is rendered, so it does not
    depend on Pillow or FreeType (a test pins the rendered pixels instead). ``workflow/rules/common.smk`` computes
    the same string from ``generator.json`` at parse time.
    """
    return hashlib.sha256(f"nsd-synth-scenes:v{GENERATOR_VERSION}:{image_size}px".encode()).hexdigest()[:16]
