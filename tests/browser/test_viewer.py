"""The explanation viewer in headless Chromium against a real server with a tiny sequence classifier."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cdp_browser import Browser, find_chromium
from models import build_encoder

pytestmark = pytest.mark.slow

LAUNCHER = Path(__file__).with_name("serve_with_viewer.py")
MODEL = "tiny"
TEXT = "The staff were friendly and the food was wonderful"
# Where a copy of each screenshot is kept for a human to look at (CI artifacts); tmp_path otherwise.
SCREENSHOT_DIR_ENV = "PREDICTOR_SCREENSHOT_DIR"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); the viewer test needs a browser")
    return binary


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m predictor` (with /viewer wired) serving a tiny classifier on 127.0.0.1; yields its base URL."""
    root = tmp_path_factory.mktemp("viewer-server")
    model_dir = build_encoder(root / "model", "sequence_classification")
    port = free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 (closed below)
    env = {**os.environ, "PREDICTOR_CACHE_DIR": str(root / "cache")}
    process = subprocess.Popen(
        [sys.executable, str(LAUNCHER), "--model_name", MODEL, "--model_dir", str(model_dir),
         "--http_port", str(port), "--grpc_port", str(free_port()), "--ts_grpc_port", "0",
         "--ts_management_port", "0"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{(root / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after 120s:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.25)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture()
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    profile = tmp_path / "profile"
    profile.mkdir()
    driver = Browser(chromium, profile)
    yield driver
    driver.close()


def keep_screenshot(path: Path) -> None:
    """Copy the screenshot where CI (or a developer) asked for it."""
    target = os.environ.get(SCREENSHOT_DIR_ENV)
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def explain(browser: Browser) -> None:
    """Click Explain and wait for the page to finish (done or error)."""
    browser.evaluate("document.body.dataset.state = 'idle'")
    browser.click("#explain")
    state = browser.wait_for(lambda: browser.evaluate("document.body.dataset.state") in ("done", "error")
                             and browser.evaluate("document.body.dataset.state"), 60, "the explanation")
    assert state == "done", browser.evaluate("document.getElementById('error').textContent")


def shown_words(browser: Browser) -> list[dict[str, object]]:
    return browser.evaluate(
        "[...document.querySelectorAll('#explanation .word')].map((s) => ({word: s.dataset.word, "
        "importance: Number(s.dataset.importance), colour: getComputedStyle(s).backgroundColor}))")


def rgba(colour: str) -> tuple[float, ...]:
    """'rgba(22, 163, 74, 0.5)' or 'rgb(...)' -> numbers."""
    inner = colour[colour.index("(") + 1: colour.index(")")]
    values = [float(v) for v in inner.split(",")]
    return tuple(values + [1.0] * (4 - len(values)))


def assert_coloured(words: list[dict[str, object]]) -> None:
    """Green for positive importance, red for negative, opacity growing with magnitude."""
    largest = max(abs(float(w["importance"])) for w in words)
    assert largest > 0
    for w in words:
        importance = float(w["importance"])
        red, green, _, alpha = rgba(str(w["colour"]))
        assert alpha == pytest.approx(abs(importance) / largest, abs=0.01), w
        if abs(importance) > 0.05 * largest:
            assert (green > red) if importance > 0 else (red > green), w


def assert_not_blank(png: Path) -> None:
    from PIL import Image, ImageStat  # pillow: a kserve dependency

    with Image.open(png) as image:
        rgb = image.convert("RGB")
        assert rgb.width >= 800 and rgb.height >= 400
        variance = ImageStat.Stat(rgb.convert("L")).var[0]
        colours = rgb.getcolors(maxcolors=1 << 20) or []
    assert variance > 100, f"screenshot looks blank (luminance variance {variance:.1f})"
    assert len(colours) > 50, f"screenshot has only {len(colours)} distinct colours"


def test_viewer_colours_every_word_and_shows_the_prediction(server: str, browser: Browser, tmp_path: Path) -> None:
    browser.navigate(f"{server}/viewer")
    browser.wait_for(lambda: browser.evaluate("document.getElementById('model').value") == MODEL, 30,
                     "the model name from GET /v1/models")
    assert browser.evaluate("document.getElementById('base').value") == server
    browser.type_into("#text", TEXT)
    explain(browser)

    api = httpx.post(f"{server}/v1/models/{MODEL}:explain", json={"instances": [{"text": TEXT}]}, timeout=60)
    expected = api.json()["explanations"][0]
    label = httpx.post(f"{server}/v1/models/{MODEL}:predict", json={"instances": [TEXT]}, timeout=60).json()
    words = shown_words(browser)
    assert [w["word"] for w in words] == expected["words"]  # one span per word, in order
    assert [w["importance"] for w in words] == pytest.approx(expected["importances"], abs=1e-6)
    assert_coloured(words)
    assert browser.evaluate("document.getElementById('prediction').textContent") == label["predictions"][0]
    assert browser.evaluate("document.getElementById('target-used').textContent") == \
        f"{expected['target']} · {expected['label']}"

    png = browser.screenshot(tmp_path / "viewer-kserve.png")
    keep_screenshot(png)
    assert_not_blank(png)
    # Self-contained: nothing but the page itself and the server's API was fetched.
    assert all(url.startswith(server) for url in browser.requested_urls()), browser.requested_urls()
    assert browser.page_errors() == []


def test_viewer_torchserve_route_with_a_target(server: str, browser: Browser, tmp_path: Path) -> None:
    browser.navigate(f"{server}/viewer")
    browser.wait_for(lambda: browser.evaluate("document.getElementById('model').value") == MODEL, 30, "model name")
    browser.evaluate("(() => { const s = document.getElementById('route'); s.value = 'torchserve';"
                     " s.dispatchEvent(new Event('change')); })()")
    browser.type_into("#text", TEXT)
    browser.type_into("#target", "0")
    explain(browser)

    expected = httpx.post(f"{server}/explanations/{MODEL}", json={"text": TEXT, "target": 0}, timeout=60).json()
    words = shown_words(browser)
    assert [w["word"] for w in words] == expected["words"]
    assert_coloured(words)
    assert browser.evaluate("document.getElementById('target-used').textContent") == f"0 · {expected['label']}"
    posted = [u for u in browser.requested_urls() if "/explanations/" in u or "/predictions/" in u]
    assert posted == [f"{server}/predictions/{MODEL}", f"{server}/explanations/{MODEL}"]
    keep_screenshot(browser.screenshot(tmp_path / "viewer-torchserve.png"))


def test_viewer_reports_server_errors(server: str, browser: Browser) -> None:
    browser.navigate(f"{server}/viewer?model=no-such-model")
    browser.type_into("#text", TEXT)
    browser.click("#explain")
    browser.wait_for(lambda: browser.evaluate("document.body.dataset.state") == "error", 30, "the error")
    message = browser.evaluate("document.getElementById('error').textContent")
    assert "404" in message and "no-such-model" in message
    assert browser.evaluate("document.getElementById('results').hidden") is True


def test_viewer_route_serves_the_packaged_page(server: str) -> None:
    response = httpx.get(f"{server}/viewer", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert "<script" in response.text and "src=" not in response.text.split("<script", 1)[1].split(">", 1)[0]


def test_viewer_opens_as_a_standalone_file(browser: Browser) -> None:
    page = Path(__file__).resolve().parents[2] / "predictor" / "static" / "viewer.html"
    browser.navigate(page.as_uri())
    assert browser.evaluate("document.getElementById('base').value") == "http://localhost:8080"
    unreachable = f"http://127.0.0.1:{free_port()}"
    browser.navigate(f"{page.as_uri()}?base={unreachable}&model=m&kind=qa")
    assert browser.evaluate("document.getElementById('base').value") == unreachable
    assert browser.evaluate("document.getElementById('qa-inputs').hidden") is False
    browser.click("#explain")
    browser.wait_for(lambda: browser.evaluate("document.body.dataset.state") == "error", 30, "the error")
    message = browser.evaluate("document.getElementById('error').textContent")
    assert f"cannot reach {unreachable}" in message and "CORS" in message
    assert browser.page_errors() == []
