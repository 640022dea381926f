"""The review page (``/ui``) in a real headless browser (Debian's chromium + chromium-driver through selenium):
a token-protected server with an archive classifies the bundled samples; the page wants a login, the login form
sets the session cookie, the grid shows one real PNG thumbnail per image, the filters (label, maximum
confidence, since) narrow it, the cursor pages through it, the detail view shows the top-k, novelty, model and
sizes; bad filters are a 400 page, no archive a 404 page, and every value is escaped.

Skipped when chromium, chromedriver or selenium are missing (``.ci/run`` installs them on CI). Set
``VITCODEC_REVIEW_SCREENSHOT=docs/review-page.png`` to refresh the screenshot of the grid in the docs.
"""

from __future__ import annotations

import io
import os
import shutil
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from PIL import Image
from vitcodec.cloud.archive import stream_id
from vitcodec.demo import report as demo_report
from vitcodec.edge import images

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
TOKEN = "review-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
COOKIE = "vitcodec_session"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCREEN = (1200, 800)
WAIT_S = 90  # reconstructions run on a busy 2-core machine
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run")


def _executable(name: str) -> str | None:
    found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    return found


# -- the server, its archive, the browser -------------------------------------------------------------------

@pytest.fixture(scope="module")
def review_repo(calibrated_repo):
    """The calibrated zoo: answers carry novelty and the page marks novel images."""
    return calibrated_repo


@pytest.fixture(scope="module")
def review_server(start_server, review_repo, tmp_path_factory):
    server = start_server(model_repo=[review_repo], models=["fmnist-q2"], auth_token=TOKEN,
                          archive=tmp_path_factory.mktemp("review") / "archive.db")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(review_server):
    with httpx.Client(base_url=review_server.http_url, timeout=WAIT_S, headers=AUTH) as client:
        yield client


@pytest.fixture(scope="module")
def archived(api, review_repo) -> dict[str, dict]:
    """Every bundled sample encoded on the edge and classified: archive id -> its entry (GET /v1/images/{id})."""
    from vitcodec.packages import resolve_model

    package = resolve_model("fmnist-q2", roots=[review_repo])
    files = [Path(s.path) for s in demo_report.read_samples(SAMPLES)]
    encoder = images.load_encoder(str(package.path), None)
    items = list(images.encode_batches(encoder, files))
    assert all(item.error is None for item in items)
    entries = {}
    for item in items:
        answer = api.post("/v1/classify", content=item.result.stream,
                          headers={"Content-Type": "application/octet-stream"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["id"] == stream_id(item.result.stream)
        entries[answer.json()["id"]] = api.get(f"/v1/images/{answer.json()['id']}").json()
    assert len(entries) == len(files)
    return entries


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver_path = _executable("chromium"), _executable("chromedriver")
    if chromium is None or driver_path is None:
        if os.environ.get("CI"):  # .ci/run installs them: a missing browser there is a failure, not a skip
            pytest.fail("CI: Debian's chromium and chromium-driver are missing (.ci/run should have installed them)")
        pytest.skip("the review page tests need Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; .ci/run installs them when run as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument(f"--window-size={SCREEN[0]},{SCREEN[1]}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


# -- helpers ------------------------------------------------------------------------------------------------

def _by():
    from selenium.webdriver.common.by import By

    return By


def _wait(driver, condition, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _gone(page):
    """A wait condition: the element's page was replaced. Chromium sometimes reports a replaced node as an
    inspector error ("does not belong to the document") rather than as a stale element: both mean gone."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    def check(_driver) -> bool:
        try:
            page.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    return check


def _follow(driver, element) -> None:
    """Click a link or button and wait until the next page has replaced this one."""
    page = driver.find_element(_by().TAG_NAME, "html")
    element.click()
    _wait(driver, _gone(page))
    _wait(driver, lambda d: d.execute_script("return document.readyState") == "complete")


def _submit(driver, form_css: str = "main form") -> None:
    _follow(driver, driver.find_element(_by().CSS_SELECTOR, f"{form_css} button[type=submit]"))


def _login(driver, server) -> None:
    """Log the browser in through the form (nothing to do when its cookie is still valid)."""
    driver.get(f"{server.http_url}/ui")
    if "/ui/login" not in driver.current_url:
        return
    driver.find_element(_by().NAME, "token").send_keys(TOKEN)
    _submit(driver)
    assert "/ui/login" not in driver.current_url


def _open(driver, server, path: str) -> None:
    _login(driver, server)
    driver.get(f"{server.http_url}{path}")


def _cards(driver) -> list:
    return driver.find_elements(_by().CSS_SELECTOR, "#grid a.card")


def _card_ids(driver) -> list[str]:
    return [card.get_attribute("data-id") for card in _cards(driver)]


def _wait_for_thumbnails(driver) -> None:
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # they load lazily
    _wait(driver, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('#grid img')).every(i => i.complete && i.naturalWidth > 0)"))
    driver.execute_script("window.scrollTo(0, 0)")


def _session(driver, server) -> httpx.Client:
    """An HTTP client carrying the browser's session cookie and nothing else."""
    cookie = driver.get_cookie(COOKIE)
    assert cookie is not None
    return httpx.Client(base_url=server.http_url, timeout=WAIT_S, cookies={COOKIE: cookie["value"]})


# -- tests --------------------------------------------------------------------------------------------------

def test_without_an_archive_the_page_says_so(cloud_server):
    with httpx.Client(base_url=cloud_server.http_url, timeout=30) as http:
        for path in ("/ui", "/ui/images/abc"):
            page = http.get(path)
            assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
            assert "archive is not enabled" in page.text and "--archive" in page.text
        # no token on that server: nothing to log in to
        assert http.get("/ui/login", params={"next": "/ui"}).headers.get("location") == "/ui"


def test_the_page_wants_a_login_and_the_form_sets_a_strict_httponly_cookie(browser, review_server, archived):
    browser.get(f"{review_server.http_url}/ui/login")
    browser.delete_all_cookies()
    browser.get(f"{review_server.http_url}/ui?label=Bag")
    assert urlparse(browser.current_url).path == "/ui/login"
    assert parse_qs(urlparse(browser.current_url).query)["next"] == ["/ui?label=Bag"]
    with httpx.Client(base_url=review_server.http_url, timeout=WAIT_S) as anonymous:
        page = anonymous.get("/ui")
        assert page.status_code == 303 and page.headers["location"] == "/ui/login?next=%2Fui"
        assert anonymous.get(f"/ui/images/{next(iter(archived))}").status_code == 303
        assert anonymous.get(f"/v1/images/{next(iter(archived))}/reconstruction").status_code == 401
        wrong = anonymous.post("/ui/login", data={"token": "guess", "next": "/ui"})
        assert wrong.status_code == 401 and "invalid token" in wrong.text and COOKIE not in wrong.cookies
        elsewhere = anonymous.post("/ui/login", data={"token": TOKEN, "next": "https://example.com/"})
        assert elsewhere.status_code == 303 and elsewhere.headers["location"] == "/ui"  # no open redirect
    # a wrong token in the browser: the form again, with the error
    browser.find_element(_by().NAME, "token").send_keys("not-the-token")
    _submit(browser)
    assert browser.find_element(_by().ID, "login-error").text == "invalid token"
    assert browser.get_cookie(COOKIE) is None
    # the right one: back where it wanted to go, the grid filtered as asked
    browser.find_element(_by().NAME, "token").send_keys(TOKEN)
    _submit(browser)
    assert urlparse(browser.current_url).path == "/ui"
    assert browser.find_element(_by().NAME, "label").get_attribute("value") == "Bag"
    cookie = browser.get_cookie(COOKIE)
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert TOKEN not in cookie["value"]  # a keyed hash of the token, not the token
    with _session(browser, review_server) as session:
        image_id = next(iter(archived))
        assert session.get(f"/v1/images/{image_id}/reconstruction").status_code == 200
        assert session.delete(f"/v1/images/{image_id}").status_code == 401  # the cookie never writes
    # logging out drops the cookie
    _submit(browser, "header form")
    assert urlparse(browser.current_url).path == "/ui/login" and browser.get_cookie(COOKIE) is None


def _viewport(driver, width: int, height: int) -> None:
    """Size the window so that the page itself (the viewport) is width x height."""
    driver.set_window_size(width, height)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])


def test_the_grid_shows_a_real_png_thumbnail_per_image(browser, review_server, archived, tmp_path):
    _open(browser, review_server, "/ui")
    _viewport(browser, *SCREEN)
    _open(browser, review_server, "/ui")
    ids = _card_ids(browser)
    assert sorted(ids) == sorted(archived)  # every archived image, once (fewer than a page)
    newest_first = sorted(archived, key=lambda i: archived[i]["created"], reverse=True)
    assert [archived[i]["created"] for i in ids] == [archived[i]["created"] for i in newest_first]
    _wait_for_thumbnails(browser)
    thumbnails = browser.find_elements(_by().CSS_SELECTOR, "#grid img")
    assert len(thumbnails) == len(archived)
    with _session(browser, review_server) as session:  # what the browser fetched, with its own cookie
        for card, image in zip(_cards(browser), thumbnails):
            src = image.get_attribute("src")
            assert urlparse(src).path == f"/v1/images/{card.get_attribute('data-id')}/reconstruction"
            png = session.get(src)
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            assert png.content.startswith(PNG_SIGNATURE)
            entry = archived[card.get_attribute("data-id")]
            with Image.open(io.BytesIO(png.content)) as decoded:
                assert decoded.format == "PNG" and decoded.size == tuple(reversed(entry["image_size"]))
            assert image.get_property("naturalWidth") == entry["image_size"][1]
            assert card.find_element(_by().CSS_SELECTOR, ".label").text == entry["label"]
    page = browser.page_source
    assert "Log out" in page
    # the screenshot of the grid, as docs/review-page.png shows it
    shot = tmp_path / "review-page.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as image:
        assert abs(image.size[0] - SCREEN[0]) <= 20 and abs(image.size[1] - SCREEN[1]) <= 20
    target = os.environ.get("VITCODEC_REVIEW_SCREENSHOT")
    if target:
        shutil.copyfile(shot, ROOT / target if not os.path.isabs(target) else target)


def test_filters_narrow_the_grid(browser, review_server, archived):
    labels = Counter(e["label"] for e in archived.values())
    # the most common label that not every image got (an untrained fallback model may give one label to all)
    label, count = next(((name, n) for name, n in labels.most_common() if n < len(archived)),
                        labels.most_common(1)[0])
    _open(browser, review_server, "/ui")
    field = browser.find_element(_by().NAME, "label")
    field.clear()
    field.send_keys(label)
    _submit(browser)
    assert parse_qs(urlparse(browser.current_url).query)["label"] == [label]
    assert len(_cards(browser)) == count
    assert {card.find_element(_by().CSS_SELECTOR, ".label").text for card in _cards(browser)} == {label}
    assert sorted(_card_ids(browser)) == sorted(i for i, e in archived.items() if e["label"] == label)
    _open(browser, review_server, "/ui?label=no-such-label")
    assert _cards(browser) == [] and browser.find_element(_by().ID, "empty").is_displayed()
    _open(browser, review_server, "/ui")
    # the low-confidence view: top-1 probability at most 0.6
    _follow(browser, browser.find_element(_by().PARTIAL_LINK_TEXT, "Low confidence"))
    assert parse_qs(urlparse(browser.current_url).query) == {"max_confidence": ["0.6"]}
    low = sorted(i for i, e in archived.items() if e["confidence"] <= 0.6)
    assert sorted(_card_ids(browser)) == low
    if not low:
        assert browser.find_element(_by().ID, "empty").is_displayed()
    # since: everything is older than a moment in the future
    _open(browser, review_server, "/ui?since=2999-01-01T00:00:00Z")
    assert _cards(browser) == [] and "No archived image" in browser.find_element(_by().ID, "empty").text
    newest = max(e["created"] for e in archived.values())
    _open(browser, review_server, f"/ui?since={newest}")
    assert sorted(_card_ids(browser)) == sorted(i for i, e in archived.items() if e["created"] >= newest)


def test_the_cursor_pages_through_everything(browser, review_server, archived):
    _open(browser, review_server, "/ui?limit=7")
    seen, pages = [], 0
    while True:
        pages += 1
        ids = _card_ids(browser)
        assert 1 <= len(ids) <= 7
        seen += ids
        links = browser.find_elements(_by().ID, "next")
        if not links:
            break
        _follow(browser, links[0])
        assert parse_qs(urlparse(browser.current_url).query)["limit"] == ["7"]  # the filters travel along
        assert browser.find_element(_by().ID, "newest").is_displayed()
        assert pages < 10
    assert pages == -(-len(archived) // 7) and sorted(seen) == sorted(archived) and len(set(seen)) == len(seen)


def test_bad_filters_are_a_400_page_with_the_message(browser, review_server, archived, api):
    cases = {"max_confidence=high": "max_confidence", "max_confidence=2": "max_confidence",
             "since=yesterday": "since must be an ISO 8601 time", "limit=0": "limit", "cursor=garbage": "cursor"}
    for query, words in cases.items():  # the pages take the bearer header too
        page = api.get(f"/ui?{query}")
        assert page.status_code == 400 and page.headers["content-type"].startswith("text/html"), query
        assert words in page.text, query
    _open(browser, review_server, "/ui?since=yesterday")
    assert browser.find_element(_by().TAG_NAME, "h1").text == "Bad request"
    assert "since must be an ISO 8601 time" in browser.find_element(_by().ID, "message").text


def test_the_detail_view(browser, review_server, archived, api):
    _open(browser, review_server, "/ui")
    first = _cards(browser)[0]
    image_id = first.get_attribute("data-id")
    _follow(browser, first)
    assert urlparse(browser.current_url).path == f"/ui/images/{image_id}"
    entry = archived[image_id]
    By = _by()
    assert browser.find_element(By.ID, "image-id").text == image_id
    rows = browser.find_elements(By.CSS_SELECTOR, "#topk tr")[1:]
    assert len(rows) == len(entry["top_k"]) == 5
    assert [r.find_element(By.CSS_SELECTOR, ".topk-label").text for r in rows] == [t["label"] for t in entry["top_k"]]
    shown = [float(r.find_element(By.CSS_SELECTOR, ".topk-probability").get_attribute("data-probability"))
             for r in rows]
    assert shown == pytest.approx([t["probability"] for t in entry["top_k"]], abs=1e-4)
    assert browser.find_element(By.ID, "label").text.startswith(entry["label"])
    assert browser.find_element(By.ID, "model").text == entry["model"] == "fmnist-q2"
    assert browser.find_element(By.ID, "version").text == entry["version"]
    assert browser.find_element(By.ID, "model-id").text == entry["model_id"]
    assert browser.find_element(By.ID, "created").get_attribute("datetime") == entry["created"]
    assert browser.find_element(By.ID, "client").text == (entry["client"] or "unknown")
    png = api.get(f"/v1/images/{image_id}/reconstruction").content
    assert int(browser.find_element(By.ID, "stream-bytes").get_attribute("data-bytes")) == entry["bytes"]
    assert int(browser.find_element(By.ID, "png-bytes").get_attribute("data-bytes")) == len(png)
    image = browser.find_element(By.ID, "image")
    _wait(browser, lambda d: image.get_property("complete") and image.get_property("naturalWidth") > 0)
    assert image.get_property("naturalWidth") == entry["image_size"][1]
    assert image.size["width"] >= 5 * entry["image_size"][1]  # shown larger than the thumbnail's pixels
    novelty = browser.find_elements(By.ID, "novelty")
    if entry["novelty"] is None:
        assert novelty == []
    else:
        assert f"{entry['novelty']:.2f}" in novelty[0].text
        assert ("unlike the training data" in novelty[0].text) == entry["out_of_distribution"]
    # an image the archive does not hold
    _open(browser, review_server, "/ui/images/0123456789abcdef0123456789abcdef")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Not found"


def test_novel_images_are_flagged_when_the_model_is_calibrated(browser, review_server, archived):
    novel = sorted(i for i, e in archived.items() if e["out_of_distribution"])
    _open(browser, review_server, "/ui")
    flagged = sorted(c.get_attribute("data-id") for c in browser.find_elements(_by().CSS_SELECTOR, "#grid a.novel"))
    assert flagged == novel and novel  # the colour drawings at least


def test_every_value_is_escaped_and_scripts_are_refused(review_server, archived, api):
    page = api.get("/ui", params={"label": '"><script>alert(1)</script>'})
    assert page.status_code == 200
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text and "&#34;&gt;" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp  # no script may run at all
    assert page.headers["cache-control"] == "no-store"
