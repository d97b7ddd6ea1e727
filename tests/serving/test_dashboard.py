"""The dashboard in a real headless Chromium against a real service with data.

`DASHBOARD_SCREENSHOTS=docs` writes the screenshots into docs/ (what the README shows); otherwise they go
to a temporary directory.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from teacher_service import wire
from tests.servers import ServiceProcess, wait_until
from tests.serving.test_api import MAZE, TASKS, create, propose
from tests.serving.test_inspection import ADROIT

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
BLUE, ORANGE = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # the first two series colors


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
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        pages.append(page)
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url)
        return page, errors

    yield open_
    for page in pages:  # stop their polling
        page.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    return Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path)


def applied(client, curriculum: str, version: int) -> None:
    """Wait for the updates of reports made just now. Made within a second of the first proposal, they wait for the
    update worker to start (3 s here), and a page's first refresh, which would wait for them too, would space the
    next one by 20 times that (a minute)."""
    wait_until(lambda: client.get(f"/curricula/{curriculum}").json()["teacher_version"] == version, 60, "the updates")


def refreshed(page, times: int = 1) -> None:
    page.wait_for_function(f"Number(document.body.dataset.refreshes || 0) >= {times}", timeout=20_000)


def refreshed_again(page, count: int = 2) -> None:
    """Wait for `count` more refreshes, the last of them begun after this call, within the spacing the page announces
    (20 times what its last refresh took: on a loaded machine more than a fixed 20 s, where a CI run failed)."""
    data = page.evaluate("({...document.body.dataset})")
    timeout = 20_000 + (count + 1) * int(data["nextPollMs"])
    page.wait_for_function(f"Number(document.body.dataset.refreshes) >= {int(data['refreshes']) + count}", timeout=timeout)


def train(client, curriculum: str, student: str, episodes: int, skill: float, finish: bool = False) -> None:
    """Reports that look like a student learning: return and success rising with `skill`, gradients falling."""
    for i in range(episodes):
        p = (i + 1) / episodes * skill
        signals = {"episode_return": 40 * p + 3 * math.sin(i), "success": (i * 7 % 10) < 10 * p,
                   "env_steps": 100, "grad_norm_mean": 2 - p + 0.2 * math.cos(i), "grad_norm_episode": 0.5 - 0.3 * p,
                   "critic_grad_norm_mean": 5 - 2 * p, "critic_grad_norm_episode": 1.5 - p}
        if finish and i == episodes - 1:
            signals["extra"] = {wire.RUN_FINISHED: 1.0}
        proposal = propose(client, curriculum, student)
        body = {"proposal_id": proposal["proposal_id"], "student_id": student, "signals": signals}
        assert client.post("/report", json=body).status_code == 200


def evaluate(client, curriculum: str, student: str, skill: float, points: int = 8) -> None:
    for k in range(1, points + 1):
        success = min(1.0, skill * k / points + 0.05 * math.sin(k + int(student[1:])))
        body = {"curriculum": curriculum, "student_id": student, "env_steps": 5000 * k, "episodes": 10,
                "success_rate": max(success, 0.0), "mean_return": 50 * max(success, 0.0)}
        assert client.post("/evaluations", json=body).status_code == 201


def colors_of(png: bytes) -> set[tuple[int, int, int]]:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return {color for _, color in image.getcolors(maxcolors=1 << 20)}


def near(colors: set, target: tuple[int, int, int], tolerance: int = 12) -> bool:
    return any(all(abs(a - b) <= tolerance for a, b in zip(color, target)) for color in colors)


def test_compare_view_and_maze_curriculum(service, open_page, shots):
    client = service.client()
    create(client, "umaze-gradnorm", MAZE)
    assert client.post("/curricula", json={"name": "umaze-random", "task_space": MAZE,
                                           "teacher": {"algorithm": "random"}}).status_code == 201
    for name, skill in (("umaze-gradnorm", 0.9), ("umaze-random", 0.5)):
        for student in ("s1", "s2", "s3"):
            train(client, name, student, 12, skill, finish=student == "s3")
            evaluate(client, name, student, skill + {"s1": 0.0, "s2": 0.1, "s3": -0.1}[student])
    applied(client, "umaze-gradnorm", 9)

    page, errors = open_page(f"{service.url}/?refresh=1&curriculum=umaze-gradnorm#token={service.student_token}")
    refreshed(page)
    assert "token=" not in page.url and page.evaluate("localStorage.getItem('teacherToken')") == service.student_token

    # The compare view: both curricula on one chart, as the API computes them, in two colors, both named.
    compare = client.get("/compare", params={"curricula": "umaze-gradnorm,umaze-random"}).json()
    chart = page.locator("#chart-compare")
    assert chart.get_attribute("data-points") == str(sum(len(c["env_steps"]) for c in compare["curves"])) == "16"
    legend = chart.locator(".legend").text_content()
    assert "umaze-gradnorm (gradnorm-reinforce, 3 students)" in legend and "umaze-random (random, 3 students)" in legend
    drawn = colors_of(chart.locator("canvas").screenshot())
    assert near(drawn, BLUE) and near(drawn, ORANGE)
    for metric, label in (("mean_return", "mean return"), ("success_rate", "success rate")):
        page.select_option("#compare-metric", metric)
        page.wait_for_function(f"document.querySelector('#chart-compare').dataset.yLabel === '{label}'")
        assert chart.get_attribute("data-points") == "16"

    # The curriculum: summary, maze pairs and distances, teacher internals, per-student curves, states.
    teacher = client.get("/curricula/umaze-gradnorm/teacher").json()
    assert page.text_content("#teacher-version") == str(teacher["version"]) == "9"
    assert page.get_attribute("#maze", "data-total") == "36" and page.is_visible("#pairs")
    assert page.is_visible("#policy")  # the REINFORCE teacher's own distribution over pairs
    assert len(colors_of(page.locator("#pairs").screenshot())) > 5
    assert page.get_attribute("#chart-path-hist", "data-points") != "0"
    assert page.locator("#internals .chart").count() >= 5
    assert "entropy" in page.text_content("#internals")
    assert page.locator("#internal-policy_loss").get_attribute("data-points") == "9"
    # How informative each signal is, as the API computes it.
    informative = client.get("/curricula/umaze-gradnorm/informativeness",
                             params={"last": 2000, "permutations": 100}).json()["signals"]["grad_norm_mean"]
    cells = page.locator('#informativeness tr[data-signal="grad_norm_mean"] td').all_text_contents()
    assert informative["r2"] is not None
    assert cells == ["grad_norm_mean", "36", str(informative["tasks"]), f"{informative['r2']:.3f}",
                     f"{informative['adjusted_r2']:.3f}", f"{informative['p_value']:.3f}"]
    page.select_option("#student", "s2")
    page.wait_for_function("document.querySelector('#chart-student-grad').dataset.series.includes('critic_grad_norm_mean')")
    assert page.get_attribute("#chart-student-return", "data-points") == "12"
    states = page.locator("#students tbody tr td:last-child").all_text_contents()
    assert states == ["active", "active", "finished"]
    page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
    shot = page.screenshot()
    assert max(ImageStat.Stat(Image.open(io.BytesIO(shot)).convert("L")).stddev) > 20

    # Live: new proposals appear without reloading; the slider steps back through time.
    train(client, "umaze-gradnorm", "s4", 4, 0.2)
    refreshed_again(page)
    assert page.get_attribute("#maze", "data-total") == "40"
    assert page.locator("#students tbody tr").count() == 4
    page.eval_on_selector("#time-slider", "s => { s.value = 0; s.dispatchEvent(new Event('input')); }")
    first = client.get("/curricula/umaze-gradnorm/distribution",
                       params={"source": "proposals", "buckets": 40}).json()["buckets"][0]
    assert page.get_attribute("#maze", "data-shown") == str(first["proposals"])
    assert errors == []


def test_adroit_top_view_and_histograms(service, open_page, shots):
    client = service.client()
    create(client, "hand", ADROIT)
    train(client, "hand", "s1", 30, 0.6)
    for steps, success in ((5000, 1.0), (10000, 1.0 - 5e-7)):  # a span too small for ticks: must still draw
        body = {"curriculum": "hand", "student_id": "s1", "env_steps": steps, "episodes": 10,
                "success_rate": success, "mean_return": 1.0}
        assert client.post("/evaluations", json=body).status_code == 201
    page, errors = open_page(f"{service.url}/?curriculum=hand&compare=hand#token={service.student_token}")
    refreshed(page)
    assert page.is_hidden("#maze") and page.is_visible("#topview") and page.is_visible("#chart-distance")
    assert page.get_attribute("#adroit", "data-shown") == "30"
    assert page.locator("#adroit-hists .chart").count() == 5
    assert page.get_attribute("#hist-target_z", "data-points") == "20"  # bins
    topview = colors_of(page.locator("#topview").screenshot())
    assert len(topview) > 20
    page.eval_on_selector("#adroit-slider", "s => { s.value = 0; s.dispatchEvent(new Event('input')); }")
    assert page.get_attribute("#adroit", "data-shown") == "1"  # 30 proposals in 30 stretches
    page.eval_on_selector("#adroit-slider", "s => { s.value = s.max; s.dispatchEvent(new Event('input')); }")
    page.locator("#adroit").screenshot(path=str(shots / "dashboard-adroit.png"))
    assert page.get_attribute("#chart-success", "data-points") == "2" and page.locator("#chart-success canvas").count()
    assert errors == []


def test_adroit_without_a_teacher_loads_the_whole_page(service, open_page):
    """env-default's proposals have no task values: the Adroit view's first request, /distribution of proposals, was a
    500 and the page stopped there (no students, no curves: an outsider's probe). The whole page now loads."""
    client = service.client()
    body = {"name": "hand-default", "task_space": ADROIT, "teacher": {"algorithm": "env-default"}}
    assert client.post("/curricula", json=body).status_code == 201
    train(client, "hand-default", "s1", 5, 0.5)
    page, errors = open_page(f"{service.url}/?curriculum=hand-default#token={service.student_token}")
    refreshed(page)
    assert page.is_visible("#topview") and page.get_attribute("#adroit", "data-shown") == "0"
    assert page.locator('#students tr[data-student="s1"]').count() == 1
    assert errors == []


def test_page_says_where_tokens_are_and_takes_one(service, open_page):
    page, _ = open_page(service.url)  # a fresh page: nothing in localStorage
    page.wait_for_selector("#token-form", state="visible")
    assert "tokens.json" in page.text_content("#token-form") and "student_token" in page.text_content("#token-form")
    page.fill("#token", service.student_token)
    page.click("#token-form button")
    refreshed(page)
    assert page.is_hidden("#token-form") and page.text_content("#status").startswith("updated")


def test_the_link_the_service_prints_opens_the_dashboard(service, open_page):
    link = re.search(r"Dashboard: (\S+)", service.log_path.read_text()).group(1)
    assert link == f"{service.url}/#token={service.student_token}"
    page, errors = open_page(link)
    refreshed(page)
    assert page.is_hidden("#token-form") and "token" not in page.url and errors == []


def test_target_success_curves_and_target_tasks_on_the_maze(service, open_page, shots):
    client = service.client()
    for name, algorithm, pace in (("far-a", "gradnorm-reinforce", 1.0), ("far-b", "random", 0.5)):
        body = {"name": name, "task_space": MAZE, "teacher": {"algorithm": algorithm}, "target": {"farthest": 4}}
        assert client.post("/curricula", json=body).status_code == 201
        for student, skill in (("s1", 0.6 * pace), ("s2", 0.3 * pace)):
            train(client, name, student, 4, skill)
            evaluate(client, name, student, 1.0, points=3)  # the default tasks: easy
            for k in range(1, 5):  # the target tasks: far pairs, learned slowly
                body = {"curriculum": name, "student_id": student, "env_steps": 5000 * k, "episodes": 8,
                        "success_rate": skill * k / 4, "mean_return": -50.0, "on_target": True}
                assert client.post("/evaluations", json=body).status_code == 201

    page, errors = open_page(f"{service.url}/?refresh=1&curriculum=far-a&compare=far-a,far-b#token={service.student_token}")
    refreshed(page)
    # Target success: one curve per student and their mean, as /compare?on_target=true computes it.
    mean = client.get("/compare", params={"curricula": "far-a", "on_target": "true"}).json()["curves"][0]
    chart = page.locator("#chart-target-success")
    assert chart.is_visible() and chart.get_attribute("data-points") == str(4 + 4 + 4)
    assert [tuple(p) for p in json.loads(chart.get_attribute("data-mean"))] == list(zip(mean["env_steps"], mean["mean"]))
    assert mean["mean"] == pytest.approx([0.1125, 0.225, 0.3375, 0.45])
    assert chart.get_attribute("data-series").split("\n") == ["mean over students", "s1", "s2"]
    assert chart.get_attribute("data-y-label") == "success on 4 target tasks"
    assert page.get_attribute("#chart-success", "data-points") == str(3 + 3)  # the default tasks' apart
    s1 = client.get("/curricula/far-a/students").json()["students"][0]
    cells = page.locator('#students tr[data-student="s1"] td').all_text_contents()
    assert cells[3] == f"{s1['last_evaluation']['success_rate']:.2f}" and cells[5] == "0.60"  # default, target

    # The target tasks drawn on the maze: arrows (red) from starts (green) to goals.
    assert page.get_attribute("#target-figure", "data-pairs") == "4" and page.is_visible("#target-map")
    assert "4 start-to-goal pairs (the 4 start-goal pairs farthest apart)" in page.text_content("#target-caption")
    drawn = colors_of(page.locator("#target-map").screenshot())
    assert near(drawn, (0xD6, 0x27, 0x28)) and near(drawn, (0x2C, 0xA0, 0x2C))
    assert near(colors_of(page.locator("#pairs").screenshot()), (0xD6, 0x27, 0x28), 6)  # target pairs outlined

    # The compare view on the target tasks, labelled as such.
    page.select_option("#compare-on", "target")
    page.wait_for_function("document.querySelector('#chart-compare').dataset.series.includes('on target tasks')")
    compare = client.get("/compare", params={"curricula": "far-a,far-b", "on_target": "true"}).json()
    assert page.get_attribute("#chart-compare", "data-points") == str(sum(len(c["env_steps"]) for c in compare["curves"]))
    assert "target tasks" in page.text_content("#compare-distribution")
    bottom = page.evaluate("document.querySelector('#maze').getBoundingClientRect().bottom + window.scrollY")
    page.screenshot(path=str(shots / "dashboard-target.png"), full_page=True,
                    clip={"x": 0, "y": 0, "width": 1280, "height": bottom + 10})
    assert errors == []


def test_refreshes_are_spaced_by_what_they_cost(service, open_page):
    """A refresh reads whole-history aggregates: the next one waits at least 20 times as long as the last took,
    so a page asked to refresh every 10 ms refreshes a few times a second at most, not a hundred."""
    client = service.client()
    create(client, "spaced", MAZE)
    train(client, "spaced", "s1", 6, 0.5)
    applied(client, "spaced", 1)
    page, errors = open_page(f"{service.url}/?refresh=0.01&curriculum=spaced#token={service.student_token}")
    refreshed(page, 2)
    data = lambda: page.evaluate("({...document.body.dataset})")  # noqa: E731
    first = data()
    page.wait_for_timeout(2000)
    last = data()
    for d in (first, last):
        assert int(d["nextPollMs"]) == max(10, round(20 * float(d["refreshMs"]))) > 10, d  # a refresh takes > 0.5 ms
    # Unspaced, a refresh would follow every refresh time + 10 ms; spaced, 20 times the refresh time (the bound
    # allows refreshes in between four times as fast as the two sampled).
    took = min(float(first["refreshMs"]), float(last["refreshMs"]))
    assert int(last["refreshes"]) - int(first["refreshes"]) <= 2000 / (5 * took) + 1, (first, last)
    assert ", next in" in page.text_content("#status") and errors == []


def test_a_service_without_tokens_needs_none_on_the_page(tmp_path, open_page):
    """A service run with --insecure prints a link without a token, and has none to give: the page asked for one
    all the same (saying it was in tokens.json, which such a service never writes). It now shows the service."""
    proc = ServiceProcess(tmp_path, extra_env={"TEACHER_INSECURE": "true"}).start()
    try:
        create(proc.client(), "open", MAZE)
        link = re.search(r"Dashboard: (\S+)", proc.log_path.read_text()).group(1)
        assert link == f"{proc.url}/"
        page, errors = open_page(link)
        refreshed(page)
        assert page.is_hidden("#token-form") and page.text_content("#status").startswith("updated")
        assert page.evaluate("document.body.dataset.curriculum") == "open" and errors == []
    finally:
        proc.stop()


def test_more_curricula_than_one_compare_takes(tmp_path, open_page):
    """/compare takes 16 curricula; the page ticks all of them by default and asked for all in one call: with 17 the
    422 stopped every refresh, and nothing of any curriculum was shown. The page now asks 16 at a time."""
    proc = ServiceProcess(tmp_path).start()
    try:
        client = proc.client()
        names = [f"c{i:02d}" for i in range(17)]
        for name in names:
            body = {"name": name, "task_space": TASKS, "teacher": {"algorithm": "random"}}
            assert client.post("/curricula", json=body).status_code == 201
        for name, steps in (("c00", 1000), ("c16", 2000)):  # one in each call
            body = {"curriculum": name, "student_id": "s1", "env_steps": steps, "episodes": 4, "success_rate": 0.5,
                    "mean_return": 1.0}
            assert client.post("/evaluations", json=body).status_code == 201
        page, errors = open_page(f"{proc.url}/?curriculum=c16#token={proc.student_token}")
        refreshed(page)
        assert page.text_content("#status").startswith("updated") and page.get_attribute("#chart-success", "data-points") == "1"
        series = page.get_attribute("#chart-compare", "data-series").split("\n")
        assert [s.split(" ")[0] for s in series] == names and page.get_attribute("#chart-compare", "data-points") == "2"
        with page.expect_download() as download:
            page.click("#compare-csv")
        rows = Path(download.value.path()).read_text().splitlines()
        assert rows[0].startswith("curriculum,") and [r.split(",")[:3] for r in rows[1:]] == [
            ["c00", "random", "1000"], ["c16", "random", "2000"]]
        assert errors == []
    finally:
        proc.stop()


def test_a_curriculum_created_again_under_its_name_is_shown_afresh(service, open_page):
    """The page kept a curriculum's teacher updates (and Adroit proposals) by name, reading only versions after the last
    it had: deleted and created again while the page was open, the new curriculum showed the old one's updates and
    none of its own. They are now kept by name and creation time."""
    client = service.client()
    create(client, "again", MAZE)
    train(client, "again", "s1", 16, 0.5)
    applied(client, "again", 4)
    page, errors = open_page(f"{service.url}/?refresh=1&curriculum=again#token={service.student_token}")
    refreshed(page)
    assert page.locator("#internal-policy_loss").get_attribute("data-points") == "4"
    assert client.delete("/curricula/again").status_code == 204
    create(client, "again", MAZE)
    train(client, "again", "s1", 8, 0.5)
    applied(client, "again", 2)
    refreshed_again(page)
    assert page.text_content("#teacher-version") == "2"
    assert page.locator("#internal-policy_loss").get_attribute("data-points") == "2" and errors == []


def test_the_last_curriculum_deleted_while_the_page_is_open(tmp_path, open_page):
    """The page said "no curricula yet" and went on showing the deleted curriculum's charts and compare curves as if it
    were there. Those are hidden now, and come back with a new curriculum."""
    proc = ServiceProcess(tmp_path).start()
    try:
        client = proc.client()
        assert client.post("/curricula", json={"name": "only", "task_space": TASKS,
                                               "teacher": {"algorithm": "random"}}).status_code == 201
        evaluate(client, "only", "s1", 0.5, points=2)
        page, errors = open_page(f"{proc.url}/?refresh=1#token={proc.student_token}")
        refreshed(page)
        assert page.is_visible("#main") and page.get_attribute("#chart-compare", "data-points") == "2"
        assert client.delete("/curricula/only").status_code == 204
        refreshed_again(page)
        assert page.text_content("#status") == "no curricula yet" and page.is_hidden("#main")
        assert client.post("/curricula", json={"name": "next", "task_space": TASKS,
                                               "teacher": {"algorithm": "random"}}).status_code == 201
        refreshed_again(page)
        assert page.is_visible("#main") and page.text_content("#algorithm") == "random"
        assert page.get_attribute("#chart-compare", "data-points") == "0" and errors == []
    finally:
        proc.stop()


def test_every_evaluation_is_drawn_past_one_page(tmp_path, open_page):
    """The page read one page of evaluations, the oldest 10,000: past that, every new evaluation was left out of the
    students' curves. 10,000 more rows go straight into the service's SQLite file (10,000 POSTs take half a minute)."""
    proc = ServiceProcess(tmp_path).start()
    try:
        client = proc.client()
        assert client.post("/curricula", json={"name": "long", "task_space": TASKS,
                                               "teacher": {"algorithm": "random"}}).status_code == 201
        evaluate(client, "long", "s1", 0.5, points=1)
        with sqlite3.connect(tmp_path / "teacher.db") as db:
            columns = "curriculum_id, student_id, episodes, success_rate, mean_return, created_at, on_target"
            first = db.execute(f"SELECT {columns} FROM evaluations").fetchone()
            db.executemany(f"INSERT INTO evaluations ({columns}, env_steps) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(*first, 5000 * k) for k in range(2, 10_002)])
        page, errors = open_page(f"{proc.url}/?curriculum=long#token={proc.student_token}")
        refreshed(page)
        assert page.get_attribute("#chart-success", "data-points") == "10001" and errors == []
    finally:
        proc.stop()


def test_the_curricula_unticked_for_comparison_stay_unticked(tmp_path, open_page):
    """The compare boxes were built again, all ticked, whenever a curriculum was created or deleted: what the user had
    unticked came back on the chart at the next refresh."""
    proc = ServiceProcess(tmp_path).start()
    try:
        client = proc.client()
        for name in ("a", "b", "c"):
            assert client.post("/curricula", json={"name": name, "task_space": TASKS,
                                                   "teacher": {"algorithm": "random"}}).status_code == 201
        page, errors = open_page(f"{proc.url}/?refresh=1#token={proc.student_token}")
        refreshed(page)
        page.uncheck('#compare-curricula input[value="b"]')
        ticked = "[...document.querySelectorAll('#compare-curricula input:checked')].map((i) => i.value).join()"
        assert client.delete("/curricula/c").status_code == 204
        assert client.post("/curricula", json={"name": "d", "task_space": TASKS,
                                               "teacher": {"algorithm": "random"}}).status_code == 201
        refreshed_again(page)
        assert page.evaluate(ticked) == "a,d" and errors == []
    finally:
        proc.stop()
