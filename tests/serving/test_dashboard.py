"""The dashboard in a real headless Chromium against a real service with data."""

from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image, ImageStat

from tests.servers import ServiceProcess
from tests.serving.test_inspection import ADROIT, send
from tests.serving.test_api import MAZE, create

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """One service for this module's tests (each uses its own curricula): a start costs seconds."""
    proc = ServiceProcess(tmp_path_factory.mktemp("dashboard")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser():
    if shutil.which(CHROMIUM) is None:
        pytest.fail("Chromium is required: `make system-deps` installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser):
    """Opens a page in a fresh context (empty localStorage) that records console errors and exceptions."""
    pages = []

    def open_(url: str):
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        pages.append(page)
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)
        return page, errors

    yield open_
    for page in pages:  # stop their polling
        page.close()


def refreshed(page, times: int = 1) -> None:
    page.wait_for_function(f"Number(document.body.dataset.refreshes || 0) >= {times}", timeout=20_000)


def test_dashboard_draws_the_api_data_and_follows_it_live(service, open_page, tmp_path):
    client = service.client()
    create(client, "maze", MAZE)
    for i in range(12):
        send(client, "maze", f"s{i % 2 + 1}", i)
    for student, steps, success in (("s1", 500, 0.2), ("s1", 1000, 0.5), ("s2", 500, 0.4), ("s2", 1000, 0.9)):
        assert client.post("/evaluations", json={"curriculum": "maze", "student_id": student, "env_steps": steps,
                                                 "episodes": 5, "success_rate": success,
                                                 "mean_return": 10 * success}).status_code == 201

    page, errors = open_page(f"{service.url}/?token={service.student_token}&refresh=1")
    refreshed(page)
    assert "token=" not in page.url and page.evaluate("localStorage.getItem('teacherToken')") == service.student_token

    teacher = client.get("/curricula/maze/teacher").json()
    signals = client.get("/curricula/maze/signals", params={"signal": "reward"}).json()
    students = client.get("/curricula/maze/students").json()
    assert page.text_content("#teacher-version") == str(teacher["version"]) == "3"
    assert page.text_content("#episodes") == "12"
    assert page.get_attribute("#maze", "data-total") == "12" and page.is_visible("#heat-start")
    assert page.get_attribute("#chart-reward", "data-points") == str(len(signals["windows"]))
    assert page.get_attribute("#chart-success", "data-points") == "4"
    rows = page.locator("#students tbody tr")
    assert rows.count() == len(students["students"]) == 2
    assert rows.nth(1).locator("td").nth(3).text_content() == "0.90"  # s2's last success rate

    # The heatmap is drawn on the maze: walls dark, visited cells colored, and the page is not blank.
    heat = Image.open(io.BytesIO(page.locator("#heat-start").screenshot())).convert("RGB")
    assert len(heat.getcolors(maxcolors=1 << 20)) > 5
    shot = page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert max(ImageStat.Stat(Image.open(io.BytesIO(shot)).convert("L")).stddev) > 20

    # Live: new proposals appear without reloading; the slider steps back through time.
    for i in range(4):
        send(client, "maze", "s3", i)
    page.wait_for_function("document.querySelector('#maze').dataset.total === '16'", timeout=20_000)
    assert page.locator("#students tbody tr").count() == 3
    page.eval_on_selector("#time-slider", "s => { s.value = 0; s.dispatchEvent(new Event('input')); }")
    first = client.get("/curricula/maze/distribution", params={"source": "proposals", "buckets": 40}).json()["buckets"][0]
    assert page.get_attribute("#maze", "data-shown") == str(first["proposals"])
    assert errors == []


def test_adroit_curriculum_shows_ball_to_target_distance(service, open_page):
    client = service.client()
    create(client, "hand", ADROIT)
    for i in range(6):
        send(client, "hand", "s1", i)
    page, errors = open_page(f"{service.url}/?token={service.student_token}&curriculum=hand")
    refreshed(page)
    assert page.is_hidden("#maze") and page.is_visible("#chart-distance")
    signals = client.get("/curricula/hand/signals", params={"signal": "ball_target_distance"}).json()
    assert page.get_attribute("#chart-distance", "data-points") == str(len(signals["windows"])) == "6"
    assert errors == []


def test_page_asks_for_a_token(service, open_page):
    page, _ = open_page(service.url)  # a fresh page: nothing in localStorage
    page.wait_for_selector("#token-form", state="visible")
    page.fill("#token", service.student_token)
    page.click("#token-form button")
    refreshed(page)
    assert page.is_hidden("#token-form") and page.text_content("#status").startswith("updated")
