"""The reject-analysis page in a real headless chromium (tests/browser.py): sign in, the page's
plots and totals for the seeded store (tests/reject_seed.py), the filters, the CSV link, and the
verdict page's PACS rejection state.  The screenshot is docs/review/rejects.png (copied there
when ``$EDGE_WORKER_SCREENSHOT_DIR`` is set)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e .[dev])")
pytest.importorskip("sqlalchemy")

from edge_worker.subscribers.review.rejections import Rejections, RejectPolicy
from tests.browser import NEEDS_CHROMIUM, browser, screenshot  # noqa: F401
from tests.reject_seed import seed
from tests.review_http import PASSWORD, Running, config_for, start_dashboard, until

pytestmark = [NEEDS_CHROMIUM, pytest.mark.timeout(180)]


@pytest.fixture
def running(mosquitto: Any, tmp_path: Path) -> Iterator[Running]:
    run = start_dashboard(mosquitto, config_for(tmp_path))
    run.ids = seed(run.parts.store.url)  # type: ignore[attr-defined]
    # The verdict pages show rejection state when the site has the rejection commands.
    run.parts.site.rejections = Rejections(run.parts.store, RejectPolicy())
    yield run
    run.stop()


def _totals(driver: Any) -> dict[str, str]:
    return dict(driver.execute_script("return Object.assign({}, document.getElementById('totals').dataset);"))


def test_reject_analysis_page_in_a_real_browser(running: Running, browser: Any, tmp_path: Path) -> None:  # noqa: F811
    host, port = running.dashboard.address
    base = f"http://{host}:{port}/"
    browser.get(base + "review/signin?next=/review/rejects")
    browser.find_element("id", "name").send_keys("ben")  # any reviewer role
    browser.find_element("id", "password").send_keys(PASSWORD)
    browser.find_element("id", "signin").click()
    until(lambda: browser.find_elements("id", "totals"), 10, "the reject-analysis page")
    assert _totals(browser) == {"images": "6", "rejects": "2", "retakes": "4", "reviewed": "4"}
    assert len(browser.find_elements("css selector", "svg.rates")) == 6
    bar = browser.find_element("css selector", 'rect[data-series="reject_rate"][data-key="ward-3/xr-01"]')
    assert bar.get_attribute("data-rate") == "0.3333" and bar.size["width"] > 100
    reasons = [r.get_attribute("data-key") for r in browser.find_elements("css selector", "#table-reason tbody tr")]
    assert reasons == ["111209", "111211"]
    shot = screenshot(browser, tmp_path, "rejects.png")
    assert shot.stat().st_size > 5_000

    # Filters: one station, by month (a GET form: the URL says what is shown)
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "station")).select_by_value("ward-3/xr-02")
    Select(browser.find_element("id", "period")).select_by_value("month")
    browser.find_element("id", "apply").click()
    until(lambda: "station=ward-3" in browser.current_url and browser.find_elements("id", "totals"), 10, "the filtered page")
    assert _totals(browser) == {"images": "3", "rejects": "1", "retakes": "2", "reviewed": "2"}
    periods = [r.get_attribute("data-key") for r in browser.find_elements("css selector", "#table-period tbody tr")]
    assert periods == ["2026-11-01"]
    assert browser.find_element("id", "csv").get_attribute("href").endswith("/review/rejects.csv?period=month&station=ward-3%2Fxr-02")

    # The verdict page says where each rejection stands.
    browser.get(f"{base}review/verdict/{running.ids['902']}")  # type: ignore[attr-defined]
    until(lambda: browser.find_elements("id", "rejections"), 10, "the rejection state")
    item = browser.find_element("css selector", "#rejections li")
    assert item.get_attribute("data-state") == "sent" and "in PACS" in item.text and "Positioning" in item.text
    browser.get(f"{base}review/verdict/{running.ids['905']}")  # type: ignore[attr-defined]
    until(lambda: browser.find_elements("id", "rejections"), 10, "the pending rejection")
    assert "pending" in browser.find_element("css selector", "#rejections li").text
    browser.get(f"{base}review/verdict/{running.ids['904']}")  # type: ignore[attr-defined]
    until(lambda: browser.find_elements("id", "rejection-none"), 10, "no rejection for an override")
