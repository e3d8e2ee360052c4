"""A series processed by a running node (random weights, a small phantom sent with DCMTK's
storescu), seen through the API and in a real headless Chromium: findings, quality check, the
summary image as PNG, retry; and a screenshot of the dashboard."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pydicom
import pytest
from PIL import Image

from dicom_node.web.series import summary_path
from dicom_node.state import db
from m2unet.weights import random_weights
from tests.dicom_node.web.conftest import ADMIN, ADMIN_PASSWORD, logged_in, reloads, start_web_node, wait_reloaded
from tests.support.dcmtk import echoscu, have_dcmtk, storescu
from tests.support.results_data import phantom_series

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not have_dcmtk(), reason="needs DCMTK")]

SCREENSHOT_COPY = Path("/work/tools/dashboard.png")
PATIENT_NAME = "PHANTOM^CHEST"  # what the phantom series carry


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    """A node with random weights and one processed phantom series: (node, console port, series UID)."""
    tmp = tmp_path_factory.mktemp("web-series")
    weights = random_weights(tmp / "random.pt", seed=0)
    node, port = start_web_node(tmp, model={"weights": str(weights), "device": "cpu"})
    try:
        files = phantom_series(tmp / "series", seed=2, slices=16, size=128)
        sent = storescu(node.port, files, calling_ae="KEEPER", called_ae=node.ae_title)
        assert sent.successes == len(files), sent.output[-2000:]
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        node.wait_for_series(uid, states=("done",), timeout=300)
        yield node, port, uid
    finally:
        assert node.stop() == 0


def test_series_findings_and_quality_check(processed):
    node, port, uid = processed
    detail = logged_in(port).get(f"/api/series/{uid}")
    assert detail.status == 200
    body = detail.json()
    assert body["series"]["state"] == "done" and body["series"]["calling_ae"] == "KEEPER"
    findings = body["findings"]
    assert findings["severity"] in ("severe", "non-severe")
    assert set(findings["lobes"]) == {"right_upper", "right_middle", "right_lower", "left_upper", "left_lower"}
    assert body["qc"] == findings["qc"] and isinstance(body["qc"]["passed"], bool)
    assert body["summary_image"] is True
    assert "patient_name" not in body and PATIENT_NAME not in detail.body.decode()


def test_summary_image_is_the_secondary_capture_as_png(processed):
    node, port, uid = processed
    response = logged_in(port).get(f"/api/series/{uid}/summary.png")
    assert response.status == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.body))
    conn = db.connect(node.data_dir)
    try:
        ds = pydicom.dcmread(summary_path(conn, uid))
    finally:
        conn.close()
    assert image.size == (ds.Columns, ds.Rows)
    assert (Image.fromarray(ds.pixel_array).tobytes() == image.convert(ds.pixel_array.ndim == 3 and "RGB" or "L").tobytes())
    assert logged_in(port).get("/api/series/1.2.3.4/summary.png").status == 404


def test_retry_of_a_series_with_nothing_failed_is_refused(processed):
    _, port, uid = processed
    client = logged_in(port)
    response = client.post(f"/api/series/{uid}/retry")
    assert response.status == 409 and "nothing to retry" in response.json()["error"]
    assert client.post("/api/series/1.2.3.4/retry").status == 404
    assert client.get("/api/series/1.2.3.4").status == 404


def _chrome():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs Debian's chromium and chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_a_browser_logs_in_adds_a_scanner_and_sees_the_summary_image(processed, tmp_path):
    node, port, uid = processed
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _chrome()
    try:
        wait = WebDriverWait(browser, 30)
        base = f"http://127.0.0.1:{port}"
        browser.get(base + "/series/" + uid)
        wait.until(ec.presence_of_element_located((By.ID, "login-form")))  # no session: the login page
        browser.find_element(By.ID, "user").send_keys(ADMIN)
        browser.find_element(By.ID, "password").send_keys(ADMIN_PASSWORD)
        browser.find_element(By.ID, "login").click()
        wait.until(ec.presence_of_element_located((By.ID, "counts")))
        assert "1 done" in " ".join(browser.find_element(By.ID, "counts").text.split())

        browser.get(base + "/config")
        before = reloads(node)
        browser.find_element(By.ID, "source-ae").send_keys("BROWSER_CT")
        browser.find_element(By.ID, "source-host").send_keys("127.0.0.1")
        browser.find_element(By.ID, "source-add").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "sources"), "BROWSER_CT"))
        wait_reloaded(node, before)
        assert echoscu(node.port, calling_ae="BROWSER_CT", called_ae=node.ae_title).returncode == 0

        browser.get(base + "/series/" + uid)
        image = wait.until(ec.presence_of_element_located((By.ID, "summary")))
        wait.until(lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
        assert browser.execute_script("return arguments[0].naturalWidth", image) > 100
        lobes = browser.find_element(By.ID, "lobes").text
        assert "Right upper" in lobes or "right upper" in lobes.lower()
        assert PATIENT_NAME not in browser.page_source

        browser.get(base + "/")
        wait.until(ec.presence_of_element_located((By.ID, "series")))
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        assert Image.open(shot).size[0] >= 1000
        if SCREENSHOT_COPY.parent.is_dir():
            shutil.copyfile(shot, SCREENSHOT_COPY)
    finally:
        browser.quit()
