"""The HTML leaderboard page: escaping, structure, and (in headless chromium) sorting and filtering."""

from __future__ import annotations

import html as _html
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from robust.leaderboard import ranking
from robust.leaderboard.entry import validate
from robust.leaderboard.html import render_html, safe_href, svg_chart

EVIL_SCRIPT = "<script>window.__pwned=1</script>"
EVIL_IMG = '<img src=x onerror="window.__pwned=1">'
EVIL_LINK = "javascript:window.__pwned=1"
PROTOCOL = {"name": "autoattack", "version": "standard", "n_examples": 1000}


def make_entry(name: str, robust: int, clean: int = 900, n: int = 1000, **extra) -> dict:
    fields = {
        "name": name, "architecture": extra.pop("architecture", "PreActResNet-18"), "dataset": "cifar10",
        "threat": "Linf", "eps": 8 / 255, "eps_str": "8/255",
        "clean": {"accuracy": clean / n, "correct": clean, "n": n},
        "robust": {"accuracy": robust / n, "correct": robust, "n": n},
        "attack_protocol": dict(PROTOCOL, n_examples=n), "timestamp": "2025-01-01T00:00:00+00:00",
    }
    fields.update(extra)
    return validate(fields)


def make_entries() -> list[dict]:
    sweep = [{"eps": e / 255, "accuracy": a} for e, a in ((0, 0.9), (2, 0.8), (4, 0.7), (8, 0.52), (16, 0.2))]
    return [
        make_entry("Alpha", 520, sweep=sweep, training={"method": "trades"}, checkpoint_sha256="ab" * 32),
        make_entry("bravo", 515, architecture="WideResNet-28-10"),  # overlaps Alpha: tied
        make_entry("Charlie", 90),  # far below: its own rank; 9% < 50% numerically, not as text
        make_entry(EVIL_SCRIPT, 300, architecture=EVIL_IMG, source="robustbench",
                   robustbench={"link": EVIL_LINK, "authors": "<b>Mallory</b>"}),
        make_entry("Delta", 700, unreliable=True,
                   audit_flags=[{"name": "black_box_beats_white_box", "message": "Square < APGD <i>"}]),
        make_entry("Echo", 400, source="robustbench",
                   robustbench={"link": "https://robustbench.github.io/#echo", "venue": "NeurIPS"}),
        # a second protocol (L2) and a certified board
        validate({"name": "Foxtrot", "dataset": "cifar10", "threat": "L2", "eps": 0.5,
                  "clean": {"accuracy": 0.8, "correct": 400, "n": 500},
                  "certified": [{"method": "smoothing", "norm": "L2", "radius": 0.25, "accuracy": 0.6,
                                 "correct": 300, "n": 500}],
                  "certified_curve": [{"radius": 0.0, "accuracy": 0.8}, {"radius": 0.25, "accuracy": 0.6},
                                      {"radius": 0.5, "accuracy": 0.4}],
                  "timestamp": "2025-01-02T00:00:00+00:00"}),
        make_entry("Golf", 600, threat="L2", eps=0.5, eps_str="0.5"),
    ]


@pytest.fixture(scope="module")
def boards():
    return ranking.boards(make_entries())


@pytest.fixture(scope="module")
def page(boards) -> str:
    return render_html(boards, title="Test <board>")


def _strip_escaped_text(page: str) -> str:
    """The page's markup without the text of its own script and style blocks."""
    return re.sub(r"<(script|style)>.*?</\1>", "", page, flags=re.S)


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes.extend(name for name, _ in attrs)


def _parse(page: str) -> _Collect:
    parser = _Collect()
    parser.feed(page)
    parser.close()
    return parser


def _tags(page: str) -> list[str]:
    return _parse(page).tags


def _attributes(page: str) -> list[str]:
    return _parse(page).attributes


# ----------------------------------------------------------------------------------- pure python


def test_malicious_strings_are_escaped(page):
    assert "<script>window" not in page
    assert 'onerror="' not in page
    tags = _tags(page)
    assert tags.count("script") == 1 and "img" not in tags and "b" not in tags and "i" not in tags
    assert not [a for a in _attributes(page) if a.startswith("on")]  # no event handler at all
    assert "<img" not in page and "<b>Mallory" not in page and "<i>" not in page
    assert _html.escape(EVIL_SCRIPT, quote=True) in page
    assert _html.escape(EVIL_IMG, quote=True) in page
    assert "&lt;b&gt;Mallory&lt;/b&gt;" in page
    # the javascript: link is shown as text, never as an href
    assert 'href="javascript' not in page.lower()
    assert re.search(r"href=\"[^\"]*javascript", page, re.I) is None
    assert _html.escape(EVIL_LINK) in page


def test_title_is_escaped():
    out = render_html([], title='<script>alert(1)</script>"')
    assert "<script>alert" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;" in out
    assert "No entries." in out


def test_safe_links():
    assert safe_href("https://robustbench.github.io/") == "https://robustbench.github.io/"
    assert safe_href("HTTP://example.org/x") == "HTTP://example.org/x"
    for bad in ("javascript:alert(1)", " javascript:alert(1)", "data:text/html,x", "//evil.org", "ftp://x",
                "https://a b", None, 3):
        assert safe_href(bad) is None


def test_https_link_is_rendered(page):
    assert 'href="https://robustbench.github.io/#echo"' in page


def test_self_contained(page):
    markup = _strip_escaped_text(page)
    assert page.startswith("<!DOCTYPE html>")
    assert re.search(r"<(script|img|iframe|link|audio|video|source|embed|object)[^>]*\ssrc=", markup) is None
    assert "@import" not in page and "url(" not in page
    assert re.search(r"<link[^>]*stylesheet", page) is None
    assert "Content-Security-Policy" in page and "default-src &#x27;none&#x27;" in page
    # any http(s) URL on the page is an anchor's href or the escaped text of one
    for m in re.finditer(r"https?://", markup):
        before = markup[max(0, m.start() - 6):m.start()]
        assert before.endswith('href="') or before.endswith(">"), markup[m.start() - 40:m.end() + 40]


def test_one_table_per_board(boards, page):
    titles = [b["title"] for b in boards]
    assert len(boards) == 3  # Linf and L2 under autoattack, certified L2 by smoothing
    assert page.count('<table class="board-table"') == len(boards)
    for t in titles:
        assert f"</span> {_html.escape(t)}</h2>" in page
    assert page.count('class="filter"') == len(boards)
    assert "Certified acc. (%)" in page and "Robust acc. (%)" in page


def test_tied_and_unreliable_markers(boards, page):
    rows = boards[0]["rows"]
    assert [r["name"] for r in rows][:2] == ["Alpha", "bravo"] and rows[1]["tied"]
    assert "=1" in page
    assert re.search(r'class="tied"[^>]*title="[^"]*95%[^"]*overlap', page)
    assert 'class="badge unreliable"' in page
    assert "black_box_beats_white_box: Square &lt; APGD &lt;i&gt;" in page
    # the unreliable row comes last, in its own group below the ranked ones
    section = page.split('id="board-1-table"')[1].split("</table>")[0]
    ranked, apart = section.split('<tbody class="apart">')
    assert "Delta" in apart and "Delta" not in ranked
    assert "Alpha" in ranked and "Alpha" not in apart


def test_svg_curves(page):
    assert page.count("<svg") >= 2
    assert "Robust accuracy vs ε" in page and "Certified accuracy vs radius" in page
    assert "robust acc. (%)" in page and "certified acc. (%)" in page
    assert "<polyline" in page
    assert "smoothing L2 radius 0.25: 60.00 % (300/500)" in page


def test_svg_chart_edge_cases():
    one = svg_chart([{"eps": 0.03, "accuracy": 0.5}], "eps", "eps", "acc", "t <x>")
    assert one.startswith("<svg") and "<circle" in one and "<polyline" not in one and "t &lt;x&gt;" in one
    empty = svg_chart([], "radius", "r", "acc", "t")
    assert "no points" in empty
    zeros = svg_chart([{"radius": 0.0, "accuracy": 1.0}], "radius", "r", "acc", "t")
    assert "nan" not in zeros.lower() and "inf" not in zeros.lower()


def test_deterministic(boards, page):
    assert render_html(boards, title="Test <board>") == page
    assert render_html(ranking.boards(make_entries()), title="Test <board>") == page


# --------------------------------------------------------------------------------- real browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("browser test needs the python package selenium (pip install 'selenium<4.26')")
    found = {}
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        found[path] = path if Path(path).is_file() else shutil.which(Path(path).name)
        if found[path] is None:
            pytest.skip(f"browser test needs {path} (apt-get install {package})")
    options = webdriver.ChromeOptions()
    options.binary_location = found[CHROMIUM]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    drv = webdriver.Chrome(service=Service(found[CHROMEDRIVER]), options=options)
    drv.set_page_load_timeout(20)
    yield drv
    drv.quit()


@pytest.fixture()
def loaded(driver, page, tmp_path):
    path = tmp_path / "leaderboard.html"
    path.write_text(page, encoding="utf-8")
    driver.get(path.as_uri())
    return driver


def _names(driver, board: int = 1, visible_only: bool = False) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"#board-{board}-table tbody tr.entry")
    return [r.find_element(By.CSS_SELECTOR, ".model").text for r in rows if not visible_only or r.is_displayed()]


def _header(driver, label: str, board: int = 1):
    from selenium.webdriver.common.by import By

    return next(th for th in driver.find_elements(By.CSS_SELECTOR, f"#board-{board}-table thead th")
                if th.text.strip().startswith(label))


@pytest.mark.browser
def test_browser_loads_without_running_entry_scripts(loaded):
    from selenium.webdriver.common.by import By

    assert _names(loaded) == ["Alpha", "bravo", "Echo", EVIL_SCRIPT, "Charlie", "Delta"]
    assert len(loaded.find_elements(By.CSS_SELECTOR, "table.board-table")) == 3
    assert loaded.execute_script("return window.__pwned") is None
    assert EVIL_SCRIPT in loaded.find_element(By.TAG_NAME, "body").text
    assert loaded.find_elements(By.CSS_SELECTOR, "tbody img") == []
    assert loaded.find_elements(By.CSS_SELECTOR, "a[href^='javascript']") == []


@pytest.mark.browser
def test_browser_sort_by_column(loaded):
    ranked = ["Alpha", "bravo", "Echo", EVIL_SCRIPT, "Charlie"]  # the unreliable Delta stays apart, last
    _header(loaded, "Model").click()
    assert _names(loaded) == [EVIL_SCRIPT, "Alpha", "bravo", "Charlie", "Echo", "Delta"]
    assert _header(loaded, "Model").get_attribute("aria-sort") == "ascending"
    _header(loaded, "Model").click()
    assert _names(loaded) == ["Echo", "Charlie", "bravo", "Alpha", EVIL_SCRIPT, "Delta"]
    assert _header(loaded, "Model").get_attribute("aria-sort") == "descending"
    # numeric, not text: 9.00 < 30.00 < 40.00 < 51.50 < 52.00
    _header(loaded, "Robust acc.").click()
    assert _names(loaded) == ranked[::-1] + ["Delta"]
    _header(loaded, "Robust acc.").click()
    assert _names(loaded) == ranked + ["Delta"]
    _header(loaded, "Rank").click()
    assert _names(loaded) == ranked + ["Delta"]  # tied rows keep their order
    # other tables are untouched
    assert _names(loaded, board=2) == ["Golf"] and _names(loaded, board=3) == ["Foxtrot"]


@pytest.mark.browser
def test_browser_filter(loaded):
    from selenium.webdriver.common.by import By

    box = loaded.find_element(By.CSS_SELECTOR, "#board-1 input.filter")
    box.send_keys("WIDERESNET")
    assert _names(loaded, visible_only=True) == ["bravo"]
    assert "1 of 6 rows" in loaded.find_element(By.CSS_SELECTOR, "#board-1 .count").text
    assert not loaded.find_element(By.CSS_SELECTOR, "#board-1 tr.apart-heading").is_displayed()
    box.clear()
    box.send_keys("black_box")  # an audit reason of the unreliable row
    assert _names(loaded, visible_only=True) == ["Delta"]
    box.clear()
    box.send_keys("robustbench")
    assert _names(loaded, visible_only=True) == ["Echo", EVIL_SCRIPT]
    box.clear()
    box.send_keys("zzz-nothing")
    assert _names(loaded, visible_only=True) == []
    assert loaded.find_element(By.CSS_SELECTOR, "#board-1 .empty").is_displayed()
    assert loaded.execute_script("return window.__pwned") is None


@pytest.mark.browser
def test_browser_details_show_svg(loaded):
    from selenium.webdriver.common.by import By

    row = loaded.find_elements(By.CSS_SELECTOR, "#board-1-table tbody tr.entry")[0]
    svg = row.find_elements(By.CSS_SELECTOR, "details svg")
    assert svg and not svg[0].is_displayed()
    row.find_element(By.CSS_SELECTOR, "details summary").click()
    assert svg[0].is_displayed()
    assert "Robust accuracy vs ε" in row.find_element(By.CSS_SELECTOR, "details").text
