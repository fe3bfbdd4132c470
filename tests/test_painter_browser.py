"""The painter page in a real browser (headless Debian chromium driven by Playwright): painting
strokes of two classes re-renders the picture, undo/redo bring back earlier renders exactly, a new
random style and an uploaded style image change it, the saved label is a contest-format PNG, and
bad uploads and network failures show a message on the page.

Needs `pip install playwright` and /usr/bin/chromium (scripts/setup_extras.sh installs both);
Playwright never downloads a browser here."""
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jspade.painter import PainterApp, make_server

from tiny_models import tiny_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

try:
    from playwright import sync_api
except ImportError as error:
    pytest.skip(f"playwright is not usable ({error}); `bash scripts/setup_extras.sh` installs it",
                allow_module_level=True)
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; scripts/setup_extras.sh does it as root)",
                allow_module_level=True)

TREE, WATER, SAND = 5, 2, 9


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pkl")
    srv = make_server(PainterApp.from_checkpoint(path, warmup=True), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def page(tmp_path):
    profile = tmp_path / "chromium-profile"
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900}, accept_downloads=True)
        try:
            pg = context.pages[0] if context.pages else context.new_page()
            pg.set_default_timeout(20_000)
            pg.problems = []
            pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))
            pg.on("console", lambda m: "Content Security Policy" in m.text and pg.problems.append(m.text))
            yield pg
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def wait_for(page, expression, timeout=20.0, what=None):
    """Poll a JS expression until truthy (page.wait_for_function would need eval, which the page's CSP forbids)."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(f"() => ({expression})")
        if value:
            return value
        if time.monotonic() > deadline:
            status = page.evaluate("() => document.getElementById('status').textContent")
            raise AssertionError(f"timed out waiting for {what or expression}; status: {status!r}")
        page.wait_for_timeout(50)


def render_count(page):
    return page.evaluate("() => +document.getElementById('result').dataset.renderCount")


def rendered_after(page, count):
    """Wait until a render newer than `count` is shown and nothing is pending; its RGBA pixels."""
    wait_for(page, f"+document.getElementById('result').dataset.renderCount > {count} && "
                   "document.body.dataset.render === 'idle'", what="a new rendering")
    return np.array(page.evaluate("""() => {
        const img = document.getElementById('result');
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d');
        g.drawImage(img, 0, 0);
        return Array.from(g.getImageData(0, 0, c.width, c.height).data);
    }"""), np.uint8)


def stroke(page, cls, points):
    """Pick class `cls` and drag the mouse through `points` (fractions of the canvas)."""
    page.click(f'#palette button[data-id="{cls}"]')
    box = page.locator("#label-canvas").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


def canvas_id_at(page, fx, fy):
    """The class whose colour the label canvas shows at (fx, fy)."""
    rgb = page.evaluate(f"""() => {{
        const c = document.getElementById('label-canvas');
        const d = c.getContext('2d').getImageData(Math.floor({fx} * c.width), Math.floor({fy} * c.height), 1, 1).data;
        return [d[0], d[1], d[2]];
    }}""")
    classes = page.evaluate("() => fetch('/api/info').then(r => r.json()).then(i => i.classes)")
    return next(c["id"] for c in classes if c["color"] == rgb)


def test_paint_render_style_and_errors(server, page, tmp_path):
    t0 = time.monotonic()
    page.goto(server.url)
    page.wait_for_load_state("networkidle")
    assert page.locator("#palette button").count() == 29
    assert "mountain" in page.inner_text("#palette")
    first = rendered_after(page, 0)
    assert first.size == 64 * 32 * 4

    # Two strokes of two classes: each changes the label and the picture.
    n = render_count(page)
    stroke(page, TREE, [(0.1, 0.8), (0.45, 0.75), (0.45, 0.95)])
    after_tree = rendered_after(page, n)
    assert canvas_id_at(page, 0.45, 0.8) == TREE
    assert not np.array_equal(after_tree, first)
    n = render_count(page)
    stroke(page, WATER, [(0.55, 0.1), (0.9, 0.3), (0.6, 0.45)])
    after_water = rendered_after(page, n)
    assert canvas_id_at(page, 0.9, 0.3) == WATER
    assert not np.array_equal(after_water, after_tree)

    # Undo / redo from the keyboard give back exactly the earlier renders (same label, same seed).
    page.locator("#label-canvas").focus()
    n = render_count(page)
    page.keyboard.press("Control+z")
    assert np.array_equal(rendered_after(page, n), after_tree)
    n = render_count(page)
    page.keyboard.press("Control+Shift+z")
    assert np.array_equal(rendered_after(page, n), after_water)

    # Flood fill of the grass region with sand.
    page.keyboard.press("f")
    n = render_count(page)
    page.click(f'#palette button[data-id="{SAND}"]')
    box = page.locator("#label-canvas").bounding_box()
    page.mouse.click(box["x"] + 0.9 * box["width"], box["y"] + 0.9 * box["height"])
    after_fill = rendered_after(page, n)
    assert canvas_id_at(page, 0.95, 0.65) == SAND and canvas_id_at(page, 0.3, 0.8) == TREE
    assert not np.array_equal(after_fill, after_water)

    # A new random style (a new seed) changes the picture, not the label.
    seed_before = page.input_value("#seed")
    n = render_count(page)
    page.click("#random-style")
    random_style = rendered_after(page, n)
    assert page.input_value("#seed") != seed_before
    assert page.get_attribute("#result", "data-seed") == page.input_value("#seed")
    assert not np.array_equal(random_style, after_fill)

    # A style image through the encoder changes it again.
    photo = tmp_path / "style.png"
    img = np.zeros((60, 80, 3), np.uint8)
    img[:30] = (250, 120, 20)
    img[30:] = (20, 40, 90)
    Image.fromarray(img).save(photo)
    n = render_count(page)
    page.set_input_files("#style-file", str(photo))
    styled = rendered_after(page, n)
    assert page.get_attribute("#result", "data-style")
    assert "style.png" in page.inner_text("#style-name")
    assert not np.array_equal(styled, random_style)

    # The saved label is an 8-bit grayscale PNG of class ids at the painting size.
    with page.expect_download() as download:
        page.click("#save-label")
    saved = tmp_path / "label.png"
    download.value.save_as(saved)
    label = Image.open(saved)
    assert label.mode == "L" and label.size == (512, 256)
    assert set(np.unique(np.asarray(label)).tolist()) <= {0, 1, TREE, WATER, SAND, 12}
    assert {TREE, WATER, SAND} <= set(np.unique(np.asarray(label)).tolist())

    # Loading it back (through the server's import) changes nothing; a 16-bit label loads too.
    wide = np.asarray(label).astype(np.uint16)
    wide[:, :100] = WATER
    Image.fromarray(wide).save(tmp_path / "wide16.png")
    n = render_count(page)
    page.set_input_files("#label-file", str(tmp_path / "wide16.png"))
    rendered_after(page, n)
    assert "Loaded wide16.png" in page.inner_text("#status")
    assert canvas_id_at(page, 0.05, 0.05) == WATER

    # Bad uploads: the server's message is shown.
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not an image")
    page.set_input_files("#style-file", str(bad))
    page.locator("#status.error").wait_for()
    status = page.inner_text("#status")
    assert "Style upload failed" in status and "PNG or JPEG" in status
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "colour.png")
    page.set_input_files("#label-file", str(tmp_path / "colour.png"))
    page.locator("#status.error", has_text="RGB").wait_for()
    assert "single-channel" in page.inner_text("#status")

    # The server unreachable: the render error is shown, not swallowed.
    page.route("**/api/render", lambda route: route.abort("connectionrefused"))
    page.click("#random-style")
    page.locator("#status.error", has_text="cannot reach the painter server").wait_for()
    page.unroute("**/api/render")
    n = render_count(page)
    page.click("#random-style")
    rendered_after(page, n)
    page.locator("#status.ok").wait_for()

    page.screenshot(path=str(tmp_path / "painter.png"))
    assert not page.problems, page.problems
    assert time.monotonic() - t0 < 60


def test_clip_style_picker_and_prompt(page, tmp_path):
    """A CLIP model with --clip-weights: the style picker shows the bank's centres with their medoid
    thumbnails; a centre, a prompt and a style photo (through CLIP) each change the picture."""
    from tiny_models import tiny_clip_checkpoint
    ckpt, _, bank = tiny_clip_checkpoint(tmp_path / "clip")
    srv = make_server(PainterApp.from_checkpoint(ckpt, warmup=False, clip_weights="random:0"), "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        page.goto(srv.url)
        page.wait_for_load_state("networkidle")
        mean = rendered_after(page, 0)
        assert page.locator("#clip-controls").is_visible() and page.locator("#clip-text").is_visible()
        assert page.locator("#clip-styles button").count() == 1 + bank.k
        assert page.locator("#clip-styles button img").count() == bank.k  # medoid thumbnails
        n = render_count(page)
        page.click('#clip-styles button[data-index="1"]')
        centre = rendered_after(page, n)
        assert page.get_attribute("#result", "data-clip") == "style 1"
        assert page.get_attribute('#clip-styles button[data-index="1"]', "aria-checked") == "true"
        assert not np.array_equal(centre, mean)
        n = render_count(page)
        page.fill("#clip-text", "a red sunset over the sea")
        page.click("#clip-text-apply")
        prompted = rendered_after(page, n)
        assert "projected onto the training images" in page.inner_text("#clip-info")
        assert not np.array_equal(prompted, centre)
        n = render_count(page)
        page.click('#clip-styles button[data-index="mean"]')
        assert np.array_equal(rendered_after(page, n), mean)
        photo = tmp_path / "style.png"
        Image.fromarray(np.full((60, 80, 3), (250, 120, 20), np.uint8)).save(photo)
        n = render_count(page)
        page.set_input_files("#style-file", str(photo))
        assert not np.array_equal(rendered_after(page, n), mean)
        assert not page.problems, page.problems
    finally:
        srv.shutdown()
        srv.server_close()
