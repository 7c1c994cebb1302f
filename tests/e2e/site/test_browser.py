"""The built site in a real browser: Debian's chromium, driven by Selenium through chromium-driver.

Opened as an operator opens it, from a file server (file://) and from a web
server (here http.server on 127.0.0.1): the three tabs of a step switch, a
search typed key by key finds the pages (Japanese through an input method's
composition events, as Chrome gets them from IBus or Mozc), and the page asks
no other host for anything. Chromium's traffic to any host but 127.0.0.1 goes
to a recording proxy on 127.0.0.1 that answers 403, so nothing leaves the
machine even when a test fails; the test then names what was asked for.

No browser is downloaded: the test skips with the reason when /usr/bin/chromium
or chromedriver is missing (`.ci/run` installs Debian's packages).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from helpers import ROOT, wait_for
from helpers.browser import CHROMEDRIVER, CHROMIUM, MISSING, chromium_driver

pytest.importorskip("mkdocs")
pytest.importorskip("material")

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium がありません（pip install -e '.[dev]'）")

if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(f"{MISSING}。ブラウザでの手順書サイトのテストを飛ばします", allow_module_level=True)

# What an operator types, key by key, and what the input method shows after each key
# (romaji turning into kana), then the conversion (space) and the commit (Enter).
IME_TYPING: dict[str, list[tuple[str, str]]] = {
    "リストア": [("r", "r"), ("i", "り"), ("s", "りs"), ("u", "りす"), ("t", "りすt"), ("o", "りすと"),
               ("a", "りすとあ"), (" ", "リストア")],
    "空ファイル": [("k", "k"), ("a", "か"), ("r", "かr"), ("a", "から"), ("f", "からf"), ("a", "からふぁ"),
              ("i", "からふぁい"), ("r", "からふぁいr"), ("u", "からふぁいる"), (" ", "空ファイル")],
    "本番": [("h", "h"), ("o", "ほ"), ("n", "ほn"), ("b", "ほんb"), ("a", "ほんば"), ("n", "ほんばn"),
           (" ", "本番")],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("browser-site")
    output = work / "site"
    done = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "docs-build", f"--output={output}"],
                          capture_output=True, text=True, cwd=work, timeout=300,
                          env={**os.environ, "PGRUNBOOK_HOME": str(work)})
    assert done.returncode == 0, done.stdout + done.stderr
    return output

BROWSER_WAIT_SECONDS = 30
CSP_REPORTS = "/__csp-report"


class SiteServer(http.server.ThreadingHTTPServer):
    """The site over http on 127.0.0.1, with a policy that lets nothing reach another host.

    Every response carries a Content-Security-Policy that allows only the site itself (and
    data:/blob:), so a request to another host by the page or by its search worker (a worker's
    requests are not in the page's DevTools log) is refused and reported here.
    """

    daemon_threads = True

    def __init__(self, site: Path) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(_SiteFiles, directory=str(site)))
        self.csp_reports: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _SiteFiles(http.server.SimpleHTTPRequestHandler):
    POLICY = ("default-src 'self' 'unsafe-inline' 'unsafe-eval' data: blob:; "
              f"report-uri {CSP_REPORTS}")

    def end_headers(self):
        self.send_header("Content-Security-Policy", self.POLICY)
        super().end_headers()

    def do_POST(self):
        if self.path != CSP_REPORTS:
            self.send_error(405)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        report = json.loads(body or b"{}").get("csp-report", {})
        self.server.csp_reports.append(report.get("blocked-uri", "?"))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def web_server(site) -> Iterator[SiteServer]:
    server = SiteServer(site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class _Recorder(socketserver.BaseRequestHandler):
    """Stands where the outside would be: notes the request line, refuses, closes."""

    def handle(self):
        self.request.settimeout(5)
        with contextlib.suppress(OSError):
            first = self.request.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
            self.server.seen.append(first)  # type: ignore[attr-defined]
            self.request.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


class Outside(socketserver.ThreadingTCPServer):
    """A proxy on 127.0.0.1 that lets nothing through and remembers what was asked."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.seen: list[str] = []

    @property
    def port(self) -> int:
        return self.server_address[1]


@pytest.fixture(scope="module")
def outside() -> Iterator[Outside]:
    """Chromium's proxy: it sends there whatever is not for 127.0.0.1."""
    server = Outside()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory, outside) -> Iterator[webdriver.Chrome]:
    driver = chromium_driver(
        tmp_path_factory.mktemp("chromium-profile"),
        # Chromium's own form lookup (not the page's): it asks an outside host about every
        # form of an http page, here the search box; with it off, anything else asked for
        # outside is the site's doing
        "--disable-features=AutofillServerCommunication",
        # every host but loopback goes to the recorder (Chromium keeps 127.0.0.1 direct)
        f"--proxy-server=http://127.0.0.1:{outside.port}")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(params=["file", "http"])
def base(request, site, web_server) -> str:
    return site.as_uri() + "/" if request.param == "file" else web_server.url


def start_watching(browser, web_server, outside) -> None:
    browser.get_log("performance")  # drop what earlier tests left
    web_server.csp_reports.clear()
    outside.seen.clear()


def devtools_requests(browser) -> list[str]:
    """The URLs the page asked for since the last look (the DevTools log is read once)."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def requests_to_other_hosts(browser, web_server, base: str) -> list[str]:
    """What the page (DevTools log) and its workers (policy reports) asked of any other host."""
    urls = devtools_requests(browser)
    assert urls, "the DevTools log shows no request at all"
    foreign = [url for url in urls if not url.startswith((base, "data:", "blob:", "about:"))]
    time.sleep(0.2)  # no request is the claim: a grace for a report still on its way (no event to await)
    return foreign + [f"(policy) {uri}" for uri in web_server.csp_reports]


@pytest.fixture
def no_other_host(browser, web_server, outside, base) -> Iterator[None]:
    """After the test: the page asked no host but the site's own for anything.

    Chromium itself (not the page) still asks for updates, time and account services now and
    then; those go to the recording proxy and no further, and are not held against the site.
    """
    start_watching(browser, web_server, outside)
    yield
    assert requests_to_other_hosts(browser, web_server, base) == []


def open_page(browser, url: str) -> None:
    browser.get(url)
    WebDriverWait(browser, BROWSER_WAIT_SECONDS).until(
        lambda driver: driver.execute_script("return document.readyState") == "complete")


def tab_set_with(browser, text: str):
    """The content tab set whose 元の手順書 panel holds text."""
    for tab_set in browser.find_elements(By.CSS_SELECTOR, ".tabbed-set"):
        if text in tab_set.get_attribute("textContent"):
            return tab_set
    raise AssertionError(f"no tab set holds {text!r}")


def visible_panel(tab_set) -> str:
    shown = [block for block in tab_set.find_elements(By.CSS_SELECTOR, ".tabbed-content > .tabbed-block")
             if block.is_displayed()]
    assert len(shown) == 1, f"{len(shown)} panels shown"
    return shown[0].text


def click_tab(tab_set, label: str) -> None:
    for element in tab_set.find_elements(By.CSS_SELECTOR, ".tabbed-labels > label"):
        if element.text.strip() == label:
            element.click()
            return
    raise AssertionError(f"no tab {label!r}")


def ime_key(browser, key: str, composition: str) -> None:
    """One key through an input method: keydown 229 (Process), the composition, keyup."""
    code = "Space" if key == " " else f"Key{key.upper()}"
    virtual = 32 if key == " " else ord(key.upper())
    browser.execute_cdp_cmd("Input.dispatchKeyEvent", {
        "type": "rawKeyDown", "key": "Process", "code": code, "windowsVirtualKeyCode": 229})
    browser.execute_cdp_cmd("Input.imeSetComposition", {
        "text": composition, "selectionStart": len(composition), "selectionEnd": len(composition)})
    browser.execute_cdp_cmd("Input.dispatchKeyEvent", {
        "type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": virtual})


def ime_commit(browser, text: str) -> None:
    """Enter ends the composition: keydown 229, the text committed, keyup Enter."""
    browser.execute_cdp_cmd("Input.dispatchKeyEvent", {
        "type": "rawKeyDown", "key": "Process", "code": "Enter", "windowsVirtualKeyCode": 229})
    browser.execute_cdp_cmd("Input.insertText", {"text": text})
    browser.execute_cdp_cmd("Input.dispatchKeyEvent", {
        "type": "keyUp", "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13})


def search(browser, url: str, word: str, marked: str) -> list[str]:
    """Open the page, click the search box, type word as a person does; the result titles.

    Each key sends a query (r, り, りs, ...): the results count once they highlight marked,
    a word only the whole query finds.
    """
    open_page(browser, url)
    box = browser.find_element(By.CSS_SELECTOR, "input.md-search__input")
    box.click()
    if word in IME_TYPING:
        for key, composition in IME_TYPING[word]:
            ime_key(browser, key, composition)
        ime_commit(browser, word)
    else:
        box.send_keys(word)  # one keydown/keypress/keyup per character
    assert box.get_attribute("value") == word

    def titles(driver):
        marks = driver.find_elements(By.CSS_SELECTOR, ".md-search-result__item mark")
        if not any(mark.get_attribute("textContent").startswith(marked) for mark in marks):
            return False
        headings = driver.find_elements(By.CSS_SELECTOR, ".md-search-result__item :is(h1, h2)")
        return [heading.get_attribute("textContent").strip() for heading in headings] or False

    try:
        return WebDriverWait(browser, BROWSER_WAIT_SECONDS).until(titles)
    except TimeoutException:
        meta = browser.find_element(By.CSS_SELECTOR, ".md-search-result__meta").text
        console = [entry["message"] for entry in browser.get_log("browser")]
        raise AssertionError(f"no results for {word!r}: {meta!r}; console: {console}") from None


def test_three_tabs_switch(browser, base, no_other_host):
    open_page(browser, base + "backup.html")
    custom = tab_set_with(browser, 'docker exec -i knot-db pg_dump -U app -d app -F c -f "/tmp/${BACKUP_NAME}"')
    assert "invoke backup --env=prod" in visible_panel(custom)
    click_tab(custom, "手作業")
    manual = visible_panel(custom)
    assert ".partial" in manual and "pg_dump" in manual
    click_tab(custom, "元の手順書")
    shown = visible_panel(custom)
    assert 'docker exec -i knot-db pg_dump -U app -d app -F c -f "/tmp/${BACKUP_NAME}"' in shown
    assert "キットとの違い" in shown
    # linked tabs: the other steps of the page show their original too
    preflight = tab_set_with(browser, 'docker ps --format "table {{.Names}}\\t{{.Image}}"')
    assert 'docker ps --format "table {{.Names}}\\t{{.Image}}"' in visible_panel(preflight)
    click_tab(custom, "タスク")
    assert "invoke backup --env=prod" in visible_panel(custom)


def test_original_page_is_linked_from_home(browser, base, no_other_host):
    open_page(browser, base + "index.html")
    link = browser.find_element(By.CSS_SELECTOR, 'article a[href="original.html"]')
    link.click()
    WebDriverWait(browser, BROWSER_WAIT_SECONDS).until(lambda driver: driver.current_url.endswith("original.html"))
    article = browser.find_element(By.CSS_SELECTOR, "article").text
    assert "DB バックアップ／リストア手順（PostgreSQL + Docker）" in article
    assert "pg_terminate_backend(pid)" in article


@pytest.mark.parametrize("word, marked, expected", [
    ("リストア", "リストア", "リストア"),
    ("空ファイル", "ファイル", "バックアップを取ったつもりで空ファイルだった"),
    ("本番", "本番", "A. 既存 DB を置き換えて戻す（本番復旧用）"),
    # the team's own command, found on the page 元の手順書 (its procedure A)
    ("pg_terminate_backend", "pg_terminate_backend", "A. 既存 DB を消して戻す（本番復旧用）"),
], ids=["restore", "empty-file", "production", "pg_terminate_backend"])
def test_search_typed_by_a_person_lists_results(browser, base, no_other_host, word, marked, expected):
    titles = search(browser, base + "index.html", word, marked)
    assert expected in titles, titles


def test_a_request_to_another_host_is_seen_and_goes_nowhere(browser, base, web_server, outside):
    """The check above can fail: the page's and a worker's requests elsewhere are caught."""
    open_page(browser, base + "index.html")
    start_watching(browser, web_server, outside)
    browser.execute_script("""
        fetch("http://fonts.pgrunbook-test.invalid/page.css").catch(() => {});
        const code = "try { importScripts('http://cdn.pgrunbook-test.invalid/worker.js'); } catch (e) {}";
        new Worker(URL.createObjectURL(new Blob([code], {type: "text/javascript"})));
    """)
    wanted = {"http://fonts.pgrunbook-test.invalid/page.css", "http://cdn.pgrunbook-test.invalid/worker.js"}
    found: list[str] = []

    def both_seen() -> bool:  # the page's own request in the DevTools log, the worker's as a report
        found.extend(devtools_requests(browser))
        return wanted <= set(found) | set(web_server.csp_reports)

    wait_for(both_seen, "the page's and the worker's requests to other hosts, seen", BROWSER_WAIT_SECONDS)
    if base.startswith("file:"):  # no policy on file://: the proxy got them, and answered 403
        assert "GET http://fonts.pgrunbook-test.invalid/page.css HTTP/1.1" in outside.seen
