"""Procedural landscapes in the contest's class ids, for training and testing without real data.

A scene is painted back to front into a label map -- sky, far mountain ridge, nearer hills, ground,
a sea / lake / river / pond, a path, trees, rocks, sometimes a house or building -- and the photo is
rendered from the label: a fixed base colour per class (so a small GAN can learn the mapping in
minutes), modulated by low-frequency texture, a sun-side lighting gradient, aerial haze near the
horizon, clouds the label does not show, and water that mirrors what stands above its shore. The
photo is therefore predictable from the label but not a lookup table.

    label, photo = generate_scene(np.random.default_rng(0), 128, 96)
    write_synthetic_dataset("datasets/synthetic", n=500, size=(128, 96), seed=0)

Scene i of seed s depends only on (s, i), so datasets of different n share their first scenes.
"""
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from jspade.data.labels import LANDSCAPE_IDS as ID
from jspade.atomic import save_image_atomic

# Photo colours (RGB) per class; display colours live in labels.py.
PHOTO_COLORS = {
    "sky": (95, 150, 215),  # zenith; the horizon side is SKY_HORIZON
    "mountain": (100, 102, 128),
    "hill": (88, 122, 72),
    "grass": (92, 150, 56),
    "field": (196, 176, 92),
    "earth": (128, 98, 70),
    "land": (150, 132, 100),
    "sand": (214, 196, 150),
    "path": (172, 150, 120),
    "tree": (34, 78, 36),
    "rock": (118, 114, 108),
    "sea": (28, 76, 138),
    "lake": (46, 108, 124),
    "river": (62, 118, 156),
    "water": (40, 92, 146),
    "house": (198, 186, 164),
    "building": (146, 146, 156),
}
SKY_HORIZON = np.array((190, 214, 236), np.float32)
CLOUD_COLOR = np.array((244, 244, 248), np.float32)
# Texture strength (relative luminance change) and how much of it is fine detail.
TEXTURE = {"sky": (0.02, 0.0), "mountain": (0.16, 0.5), "hill": (0.10, 0.4), "grass": (0.14, 0.6),
           "field": (0.10, 0.3), "earth": (0.14, 0.5), "land": (0.12, 0.5), "sand": (0.06, 0.3),
           "path": (0.08, 0.5), "tree": (0.22, 0.8), "rock": (0.20, 0.7), "sea": (0.05, 0.6),
           "lake": (0.04, 0.5), "river": (0.06, 0.6), "water": (0.05, 0.5), "house": (0.04, 0.2),
           "building": (0.05, 0.2)}
WATER_REFLECTIVITY = {"sea": 0.35, "lake": 0.6, "river": 0.45, "water": 0.5}
WATER_CLASSES = tuple(WATER_REFLECTIVITY)


def _profile(rng, n, cells=3, octaves=4, roughness=0.5):
    """Smooth random 1-D curve of length n in about [-1, 1] (fractal sum of piecewise-linear noise)."""
    t = np.linspace(0.0, 1.0, n)
    out, amp, total = np.zeros(n), 1.0, 0.0
    for octave in range(octaves):
        k = cells * 2 ** octave
        out += amp * np.interp(t * k, np.arange(k + 1), rng.uniform(-1, 1, k + 1))
        total += amp
        amp *= roughness
    return out / total


def _noise2d(rng, h, w, cells, flatness=1.0):
    """Smooth 2-D noise with about `cells` blobs across the width (bicubic upsampling of a grid);
    flatness > 1 makes the blobs wider than tall."""
    grid = rng.standard_normal((max(2, round(cells * flatness * h / w)) + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _paint_ridge(label, rng, top, height, cls, cells, roughness):
    """Fill everything below a random ridge line (top + height * profile) with `cls`."""
    h, w = label.shape
    ridge = top + height * (0.5 + 0.5 * _profile(rng, w, cells=cells, roughness=roughness))
    rows = np.arange(h)[:, None]
    label[rows >= ridge[None, :]] = ID[cls]


def generate_label(rng, width, height):
    """The label map (uint8 HxW, contest ids) of one random scene, and the horizon row."""
    h, w = height, width
    label = np.full((h, w), ID["sky"], np.uint8)
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    horizon = int(h * rng.uniform(0.42, 0.62))

    # Far mountains, then nearer and lower hills; both reach down past the horizon.
    if rng.random() < 0.85:
        peak = h * rng.uniform(0.08, 0.3)
        _paint_ridge(label, rng, peak, horizon - peak, "mountain", cells=int(rng.integers(2, 5)), roughness=0.55)
    if rng.random() < 0.5:
        top = horizon - h * rng.uniform(0.05, 0.16)
        _paint_ridge(label, rng, top, horizon - top, "hill", cells=2, roughness=0.35)

    # Ground below the horizon, with a patch of a second ground class in the foreground.
    ground = rng.choice(["grass", "field", "earth", "land", "sand"], p=[0.45, 0.2, 0.1, 0.1, 0.15])
    below = rows >= horizon
    label[below.repeat(w, 1)] = ID[ground]
    if rng.random() < 0.5:
        other = rng.choice(["grass", "field", "earth", "sand"])
        patch = (_noise2d(rng, h, w, 3) > 0.4) & (rows > horizon + 0.15 * h)
        label[patch] = ID[other]

    # Water: one body whose top edge is where reflections are mirrored.
    kind = rng.choice(["none", "sea", "lake", "river", "water"], p=[0.3, 0.25, 0.2, 0.15, 0.1])
    if kind == "sea":
        shore = horizon + h * (rng.uniform(0.12, 0.3) + 0.03 * _profile(rng, w, cells=3))
        beach = shore + h * rng.uniform(0.04, 0.1) * (1 + 0.5 * _profile(rng, w, cells=4))
        label[(rows >= horizon) & (rows < beach[None])] = ID["sand"]
        label[(rows >= horizon) & (rows < shore[None])] = ID["sea"]
    elif kind in ("lake", "water"):
        top = horizon if kind == "lake" else int(horizon + h * rng.uniform(0.12, 0.25))
        cx, half_w = w * rng.uniform(0.2, 0.8), w * rng.uniform(0.2, 0.5)
        depth = (h - top) * rng.uniform(0.3, 0.7)
        angle = np.arctan2((rows - top) / depth, (cols - cx) / half_w)  # 0..pi below the top edge
        wobble = 1 + 0.15 * np.interp(angle, np.linspace(0, np.pi, w), _profile(rng, w, cells=4))
        inside = ((cols - cx) / half_w) ** 2 + ((rows - top) / depth) ** 2 <= wobble ** 2
        label[inside & (rows >= top)] = ID[kind]
    elif kind == "river":
        t = np.clip((rows - horizon) / max(1, h - horizon), 0, None)  # 0 at horizon, 1 at bottom
        centre = w * rng.uniform(0.3, 0.7) + w * 0.25 * t * np.interp(
            t[:, 0], np.linspace(0, 1, w), _profile(rng, w, cells=2))[:, None]
        half = w * (0.01 + rng.uniform(0.08, 0.2) * t)
        label[(rows >= horizon) & (np.abs(cols - centre) < half)] = ID["river"]
    if rng.random() < 0.25:  # a winding path, widening towards the viewer
        t = np.clip((rows - horizon) / max(1, h - horizon), 0, None)
        centre = w * rng.uniform(0.2, 0.8) + w * 0.3 * t * np.interp(
            t[:, 0], np.linspace(0, 1, w), _profile(rng, w, cells=2))[:, None]
        on_land = ~np.isin(label, [ID[k] for k in WATER_CLASSES])
        label[(rows > horizon + 2) & (np.abs(cols - centre) < w * 0.06 * t) & on_land] = ID["path"]

    # A forest edge along the horizon, mostly above it.
    land_row = ~np.isin(label[min(horizon, h - 1)], [ID[k] for k in WATER_CLASSES])
    if rng.random() < 0.35:
        crown = horizon - h * rng.uniform(0.02, 0.07) * (1.2 + _profile(rng, w, cells=12, roughness=0.6))
        label[(rows >= crown[None]) & (rows <= horizon + 1) & land_row[None]] = ID["tree"]

    _place_objects(label, rng, horizon)
    return label, horizon


def _place_objects(label, rng, horizon):
    """Trees, rocks and a house/building standing on dry ground; size grows towards the viewer."""
    h, w = label.shape
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    dry = ~np.isin(label, [ID[k] for k in WATER_CLASSES + ("sky",)])
    ground_y, ground_x = np.nonzero(dry & (rows > horizon + 1))
    if len(ground_y) == 0:
        return

    def foot():
        i = rng.integers(len(ground_y))
        y, x = ground_y[i], ground_x[i]
        return y, x, (y - horizon) / max(1, h - horizon)  # nearness 0..1

    if rng.random() < 0.3:
        y, x, near = foot()
        size = h * (0.08 + 0.18 * near)
        if rng.random() < 0.6:  # house: walls + pitched roof
            hw, wall = size * 0.7, size * 0.5
            walls = (np.abs(cols - x) <= hw) & (rows <= y) & (rows > y - wall)
            roof = (rows <= y - wall) & (rows > y - wall - size * 0.45) & \
                   (np.abs(cols - x) <= hw * 1.1 * (1 - (y - wall - rows) / (size * 0.45)))
            label[walls | roof] = ID["house"]
        else:  # building: a tall block
            label[(np.abs(cols - x) <= size * 0.4) & (rows <= y) & (rows > y - size * 1.4)] = ID["building"]

    if rng.random() < 0.7:
        for _ in range(int(rng.integers(1, 9))):
            y, x, near = foot()
            size = h * (0.06 + 0.32 * near) * rng.uniform(0.7, 1.3)
            if rng.random() < 0.5:  # conifer: a cone
                cone = (rows <= y) & (rows > y - size) & (np.abs(cols - x) <= 0.3 * size * (1 - (y - rows) / size))
                label[cone] = ID["tree"]
            else:  # broadleaf: round crown on a short trunk
                r = 0.35 * size
                crown = ((cols - x) / (r * 1.1)) ** 2 + ((rows - (y - size + r)) / r) ** 2 <= 1
                trunk = (np.abs(cols - x) <= max(0.5, 0.06 * size)) & (rows <= y) & (rows > y - size + r)
                label[crown | trunk] = ID["tree"]

    if rng.random() < 0.4:
        for _ in range(int(rng.integers(1, 4))):
            y, x, near = foot()
            r = h * (0.015 + 0.05 * near) * rng.uniform(0.6, 1.4)
            label[((cols - x) / (1.5 * r)) ** 2 + ((rows - y) / r) ** 2 <= 1] = ID["rock"]


def render_photo(label, rng, horizon):
    """Render the uint8 HxWx3 photo of a label map."""
    h, w = label.shape
    rows, cols = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    coarse, fine = _noise2d(rng, h, w, 6), _noise2d(rng, h, w, max(8, w // 6))
    tint = rng.uniform(0.92, 1.08)  # time of day: one brightness per photo
    photo = np.zeros((h, w, 3), np.float32)
    for name, color in PHOTO_COLORS.items():
        mask = label == ID[name]
        if not mask.any():
            continue
        amp, fine_share = TEXTURE[name]
        tex = 1 + amp * ((1 - fine_share) * coarse[mask] + fine_share * fine[mask])
        photo[mask] = np.asarray(color, np.float32) * tex[:, None]

    # Sky: deeper blue overhead, pale at the horizon, with clouds the label does not show.
    sky = label == ID["sky"]
    t = np.clip(rows / max(1, horizon), 0, 1)[..., None] ** 1.5
    sky_color = (1 - t) * np.asarray(PHOTO_COLORS["sky"], np.float32) + t * SKY_HORIZON
    photo = np.where(sky[..., None], np.broadcast_to(sky_color, photo.shape), photo)
    if rng.random() < 0.6:
        cloud = np.clip((_noise2d(rng, h, w, 4, flatness=2.5) - rng.uniform(0.2, 0.9)) * 1.5, 0, 0.85)[..., None]
        cloud *= np.clip(1.3 - t, 0, 1)  # thinner towards the horizon
        photo = np.where(sky[..., None], photo * (1 - cloud) + CLOUD_COLOR * cloud, photo)

    # Aerial haze: land fades to the horizon colour with distance.
    distance = np.clip(1 - np.abs(rows - horizon) / (0.5 * h), 0, 1)[..., None]
    far_land = np.isin(label, [ID["mountain"], ID["hill"]])[..., None]
    haze = np.where(far_land, 0.45 * distance, 0.15 * distance ** 2 * (rows > horizon)[..., None])
    photo = photo * (1 - haze) + SKY_HORIZON * haze

    # Windows on buildings, darker roofs on houses: structure inside one class.
    building = label == ID["building"]
    photo[building & ((rows.astype(int) // 3) % 2 == 0) & ((cols.astype(int) // 3) % 2 == 0)] *= 0.55
    house = label == ID["house"]
    if house.any():  # the upper part of each column of a house is its roof
        top = np.where(house.any(0), house.argmax(0), h)
        bottom = h - house[::-1].argmax(0)
        roof = house & (rows < (top + 0.45 * (bottom - top))[None])
        photo[roof] = np.asarray((150, 64, 52), np.float32) * (0.9 + 0.1 * fine[roof])[:, None]

    # Lighting: the sun on one side, the foreground slightly darker.
    sun = rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.15)
    light = (1 + sun * (cols / w - 0.5)) * (1 - 0.12 * np.clip((rows - horizon) / h, 0, 1))
    photo *= (light * tint)[..., None]

    # Water mirrors the scene about its top edge (the far shore: a flat water plane), darkened,
    # rippled and fading towards the viewer.
    for name, strength in WATER_REFLECTIVITY.items():
        water = label == ID[name]
        if not water.any():
            continue
        top = int(np.nonzero(water.any(1))[0][0])
        ripple = np.round(1.5 * fine[water]).astype(int)
        ys, xs = np.nonzero(water)
        src_y = 2 * top - ys - 1
        seen = src_y >= 0
        mirrored = photo[np.clip(src_y, 0, h - 1), np.clip(xs + ripple, 0, w - 1)]
        alpha = (strength * np.exp(-(ys - top) / (0.4 * h)) * seen)[:, None]
        photo[ys, xs] = photo[ys, xs] * (1 - alpha) + 0.8 * mirrored * alpha

    photo += rng.normal(0, 2.0, photo.shape).astype(np.float32)  # sensor grain
    photo = cv2.GaussianBlur(photo, (3, 3), 0.6)  # soften the painted edges like a lens would
    return np.clip(photo + 0.5, 0, 255).astype(np.uint8)


def generate_scene(rng, width=128, height=96):
    """One random (label uint8 HxW with contest ids, photo uint8 HxWx3 RGB) pair."""
    label, horizon = generate_label(rng, width, height)
    return label, render_photo(label, rng, horizon)


def scene_rng(seed, index):
    return np.random.default_rng((seed, index))


def write_synthetic_dataset(out, n, size=(128, 96), seed=0, start=0, progress=None):
    """Write scenes start..start+n-1 as `<out>/imgs/<stem>.jpg` + `<out>/labels/<stem>.png` (8-bit).

    Returns the stems. `progress` is an optional callable wrapping the index range (e.g. tqdm).
    """
    out = Path(out)
    width, height = size
    indices = range(start, start + n)
    stems = []
    for index in (progress(indices) if progress else indices):
        label, photo = generate_scene(scene_rng(seed, index), width, height)
        stem = f"synth_{seed}_{index:06d}"
        save_image_atomic(out / "labels" / f"{stem}.png", Image.fromarray(label, mode="L"))
        save_image_atomic(out / "imgs" / f"{stem}.jpg", Image.fromarray(photo, mode="RGB"), quality=92)
        stems.append(stem)
    return stems


def preview_grid(scenes, label_nc=29, columns=4):
    """A uint8 image of (colourised label | photo) pairs, `columns` pairs per row."""
    from jspade.data.labels import colorize
    tiles = [np.concatenate([colorize(label, label_nc), photo], axis=1) for label, photo in scenes]
    th, tw = tiles[0].shape[:2]
    rows = (len(tiles) + columns - 1) // columns
    grid = np.full((rows * (th + 4), columns * (tw + 4), 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * (th + 4):r * (th + 4) + th, c * (tw + 4):c * (tw + 4) + tw] = tile
    return grid
