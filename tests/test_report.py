"""The dry-run report as a project manager opens it: HTML rendered by a real browser, plus Markdown and JSON.

The browser is Debian's chromium driven through /usr/bin/chromedriver (scripts/browser.sh, run by
`make services`, installs both). A missing browser fails these tests: it is never a skip.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from conftest import write_plan

from decom.cli import run_cli
from decom.engine import StagePlan
from decom.fileio import write_json
from decom.findings import SEVERITIES, Finding
from decom.report.charts import chart_rows, format_value, human_bytes, human_seconds
from decom.report.html import render_html
from decom.report.markdown import FINDINGS_TABLE_LIMIT, render_markdown, report_data

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
HOSTILE = "<script>alert(1)</script>"
SCRIPTS = "Иванов Пётр 合同审批 📄"


# -- the browser ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Debian chromium driven by selenium; fails (never skips) when it is not installed."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not (p.exists() and shutil.which(str(p)))]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: run `make services` (scripts/browser.sh installs "
                    "Debian's chromium and chromium-driver)", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: run `make install` (it is in the dev extra)", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser: Any, path: Path) -> list[dict[str, Any]]:
    """Load a file in the browser; return the console entries it logged while loading."""
    browser.get_log("browser")  # drop what earlier pages logged
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    browser.get(path.resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    return list(browser.get_log("browser"))


def by_css(browser: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(browser.find_elements(By.CSS_SELECTOR, selector))


# -- helpers --------------------------------------------------------------------------------------

def make_plan_report(plan: Path, out: Path, expected_exit: int | None = None) -> dict[str, Any]:
    """`decom plan` into `out`; exit 3 exactly when the report has blockers (or `expected_exit` if given)."""
    code = run_cli(["--quiet", "plan", str(plan), "--out", str(out)])
    data = json.loads((out / "plan-report.json").read_text(encoding="utf-8"))
    assert code == (expected_exit if expected_exit is not None else (0 if data["ready"] else 3))
    return {"html": out / "plan-report.html", "md": (out / "plan-report.md").read_text(encoding="utf-8"),
            "json": data}


def markdown_section(markdown: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    assert match, f"no section {title!r} in the Markdown"
    return match.group(1)


def markdown_bullets(markdown: str, title: str) -> list[str]:
    items = [line[2:] for line in markdown_section(markdown, title).splitlines() if line.startswith("- ")]
    return [] if items == ["none"] else items


def markdown_severity_counts(markdown: str) -> dict[str, int]:
    rows = re.findall(r"^\| (\w+) \| ([\d,]+) \|$", markdown_section(markdown, "Risks"), re.M)
    return {severity: int(count.replace(",", "")) for severity, count in rows}


def html_severity_counts(browser: Any) -> dict[str, int]:
    return {row.get_attribute("data-severity"): int(row.find_elements("css selector", ".num")[0].text.replace(",", ""))
            for row in by_css(browser, "#finding-counts tr[data-severity]")
            if row.get_attribute("data-severity") != "total"}


class _Resources(HTMLParser):
    """Every tag, attribute and style text of a page, for the self-containment check."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.references: list[tuple[str, str, str]] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "srcset", "action", "formaction", "poster", "data",
                        "background", "manifest", "ping"):
                self.references.append((tag, name, value or ""))
            if name == "style" and value:
                self.styles.append(value)

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def assert_self_contained(html: str) -> None:
    parser = _Resources()
    parser.feed(html)
    parser.close()
    assert "script" not in parser.tags, "the report needs no JavaScript"
    for tag in ("link", "img", "iframe", "object", "embed", "base", "video", "audio", "source"):
        assert tag not in parser.tags, f"<{tag}> would load something"
    for tag, name, value in parser.references:
        assert value.startswith("#"), f"<{tag} {name}={value!r}> is not a link inside the report"
    for css in parser.styles:
        assert "@import" not in css and "url(" not in css, css[:200]
    assert '<meta charset="utf-8">' in html


def rich_stages() -> list[StagePlan]:
    """Stages with findings of every severity (more high ones than a table shows), charts and hostile text."""
    findings = [Finding("critical", "signature_mismatch", f"document:{i}", f"signature of document {i} no longer "
                        "matches", {"document_id": i}) for i in range(3)]
    findings += [Finding("high", "admin_account", f"user:admin{i:03d}", "administrator account still enabled",
                         {"login": f"admin{i:03d}"}) for i in range(FINDINGS_TABLE_LIMIT + 5)]
    findings += [Finding("medium", "dormant_account", f"user:{SCRIPTS}", f"no login for 400 days {HOSTILE}",
                         {"days": 400}),
                 Finding("info", "note", f"document:{HOSTILE}", f"title «Договор» 合同 & {HOSTILE}")]
    per_year = {str(year): float(10 * (year - 1995)) for year in range(1996, 2026)}
    inventory = StagePlan(
        "inventory", "inventory", True, f"inventory of {SCRIPTS} <legacy>",
        actions=[f"export {HOSTILE}"], counts={"documents": 1234567, "content_bytes_recorded": 5 * 1024 ** 3,
                                               "users": 42},
        estimates={"hash_seconds": 7384.0, "basis": "measured at 500 MB/s"},
        risks=[f"a risk about {HOSTILE}"], decisions=["keep or drop the 2019 drafts?"],
        findings=findings[:3 + FINDINGS_TABLE_LIMIT + 5],
        charts={"documents per year": per_year, f"sizes in bytes by {HOSTILE}": {SCRIPTS: 2048.0, "<b>": 10.0}})
    audit = StagePlan("access_audit", "access_audit", True, "who can still get in",
                      blockers=[f"directory unreachable {HOSTILE}"], findings=findings[3 + FINDINGS_TABLE_LIMIT + 5:])
    later = StagePlan("backup", "backup", False, "not available yet in this version of decom",
                      blockers=["stage 'backup' (kind backup) is not available yet: `decom run` stops before it"])
    return [inventory, audit, later]


def write_exports(folder: Path, stages: list[StagePlan]) -> dict[str, Any]:
    """The three exports as decom.api.plan writes them."""
    header = {"name": "rich-plan", "owner": f"Owner {SCRIPTS}", "ticket": "CHG-1", "file": "/plans/rich.toml",
              "sha256": "0" * 64, "source": "postgresql+psycopg://reader:***@db/edm",
              "generated_at": "2026-11-20T18:00:00+00:00", "warnings": []}
    data = report_data(header, stages)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plan-report.html").write_text(render_html(data), encoding="utf-8")
    markdown = render_markdown(data)
    write_json(folder / "plan-report.json", data)
    return {"html": folder / "plan-report.html", "md": markdown,
            "json": json.loads((folder / "plan-report.json").read_text(encoding="utf-8"))}


# -- the tests ------------------------------------------------------------------------------------

def test_demo_report_renders_in_headless_chromium(small_demo, tmp_path: Path, browser: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from selenium.webdriver.common.by import By

    import decom.engine

    # A stage this decom cannot run (as in a version without it) must show as a blocker.
    monkeypatch.setattr(decom.engine, "AVAILABLE_STAGE_KINDS", decom.engine.AVAILABLE_STAGE_KINDS - {"handover"})
    url, content, _ = small_demo
    plan = write_plan(tmp_path, url, content, extra_stages='\n[[stages]]\nkind = "handover"\n')
    report = make_plan_report(plan, tmp_path / "reports", expected_exit=3)
    data = report["json"]
    console = open_page(browser, report["html"])
    assert [e for e in console if e.get("level") == "SEVERE"] == []
    assert browser.title.startswith("Decommission plan: test-plan")
    blockers = browser.find_element(By.ID, "blockers")
    assert blockers.is_displayed()
    items = [li.text for li in blockers.find_elements(By.TAG_NAME, "li")]
    assert len(items) == len(data["blockers"]) == len(markdown_bullets(report["md"], "Blockers"))
    assert any("stage 'handover' (kind handover) is not available yet" in item for item in items)
    assert html_severity_counts(browser) == markdown_severity_counts(report["md"]) == data["finding_counts"]
    charts = by_css(browser, "figure.chart svg.bar-chart")
    assert charts and all(c.is_displayed() for c in charts)
    captions = {c.text for c in by_css(browser, "figure.chart figcaption")}
    stage_charts = [title for charts_of in data["charts"].values() for title in charts_of]
    assert set(stage_charts) <= captions
    assert all(svg.find_elements(By.TAG_NAME, "rect") for svg in charts)
    unavailable = browser.find_element(By.ID, "stage-2")
    assert unavailable.get_attribute("data-available") == "false" and "NOT AVAILABLE YET" in unavailable.text
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "60" in browser.find_element(By.ID, "stage-1").text and "KiB" in body
    screenshot = tmp_path / "plan-report.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 1000 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    assert not browser.find_element(By.TAG_NAME, "nav").is_displayed(), "the print stylesheet hides the contents"
    assert browser.find_element(By.ID, "blockers").is_displayed()
    assert_self_contained(report["html"].read_text(encoding="utf-8"))


def test_unreachable_source_is_listed_under_blockers_in_html_markdown_and_json(tmp_path: Path,
                                                                              browser: Any) -> None:
    from selenium.webdriver.common.by import By

    content = tmp_path / "content"
    content.mkdir()
    plan = write_plan(tmp_path, UNREACHABLE, content)
    report = make_plan_report(plan, tmp_path / "reports", expected_exit=3)
    expected = "cannot reach the source database"
    assert report["json"]["ready"] is False
    assert len(report["json"]["blockers"]) == 1 and expected in report["json"]["blockers"][0]
    assert [b for b in markdown_bullets(report["md"], "Blockers") if expected in b]
    assert "**Not ready: 1 blocker.**" in report["md"]
    console = open_page(browser, report["html"])
    assert [e for e in console if e.get("level") == "SEVERE"] == []
    blockers = browser.find_element(By.ID, "blockers")
    assert blockers.is_displayed()
    items = [li.text for li in blockers.find_elements(By.TAG_NAME, "li")]
    assert len(items) == 1 and expected in items[0] and "127.0.0.1:1" in items[0]
    assert "Not ready: 1 blocker." in browser.find_element(By.ID, "verdict").text


def test_html_references_no_external_resource(small_demo, tmp_path: Path) -> None:
    url, content, _ = small_demo
    report = make_plan_report(write_plan(tmp_path, url, content), tmp_path / "demo")
    assert_self_contained(report["html"].read_text(encoding="utf-8"))
    rich = write_exports(tmp_path / "rich", rich_stages())
    assert_self_contained(rich["html"].read_text(encoding="utf-8"))


def test_text_from_the_legacy_system_is_escaped(tmp_path: Path, browser: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    report = write_exports(tmp_path, rich_stages())
    console = open_page(browser, report["html"])
    assert [e for e in console if e.get("level") == "SEVERE"] == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - an alert would mean the script ran
    assert browser.find_elements(By.TAG_NAME, "script") == []
    assert by_css(browser, "#risks b, #stages b, img") == []
    body = browser.find_element(By.TAG_NAME, "body").text
    assert HOSTILE in body and SCRIPTS in body and "«Договор» 合同 &" in body
    assert f"user:{SCRIPTS}" in browser.find_element(By.ID, "risks").text
    titles = [t.get_attribute("textContent") for t in by_css(browser, "svg.bar-chart > title")]
    assert f"sizes in bytes by {HOSTILE}" in titles
    html = report["html"].read_text(encoding="utf-8")
    assert HOSTILE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not re.search(r"(?<!\\)<(script|b>)", report["md"]), "raw HTML from the data in the Markdown"
    assert "\\<script\\>alert(1)\\</script\\>" in report["md"] and SCRIPTS in report["md"]


def test_markdown_and_json_show_the_same_blockers_and_findings_as_the_html(tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    report = write_exports(tmp_path, rich_stages())
    data = report["json"]
    open_page(browser, report["html"])
    html_blockers = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#blockers li")]
    assert len(html_blockers) == len(markdown_bullets(report["md"], "Blockers")) == len(data["blockers"]) == 2
    expected = {"critical": 3, "high": FINDINGS_TABLE_LIMIT + 5, "medium": 1, "low": 0, "info": 1}
    assert html_severity_counts(browser) == markdown_severity_counts(report["md"]) == data["finding_counts"] == expected
    # JSON: every finding with its stage and evidence, most severe first.
    assert len(data["findings"]) == sum(expected.values())
    assert [f["severity"] for f in data["findings"]] == sorted((f["severity"] for f in data["findings"]),
                                                              key=SEVERITIES.index)
    assert set(data["findings"][0]) == {"stage", "severity", "kind", "subject", "message", "evidence"}
    assert data["findings"][0]["evidence"] == {"document_id": 0}
    assert data["charts"]["inventory"]["documents per year"]["2025"] == 300.0
    # Tables are capped; the rest is counted and pointed to.
    high_rows = by_css(browser, 'table.findings[data-severity="high"] tbody tr')
    assert len(high_rows) == FINDINGS_TABLE_LIMIT
    assert "and 5 more" in browser.find_element(By.ID, "risks").text and "and 5 more" in report["md"]
    md_high = re.search(r"^### High \(205\)\n\n(.*?)\n\n", report["md"], re.S | re.M)
    assert md_high and len(md_high.group(1).splitlines()) == FINDINGS_TABLE_LIMIT + 2
    # Decisions and the not-available stage are in both.
    decisions = browser.find_element(By.ID, "decisions").text
    assert "keep or drop the 2019 drafts?" in decisions and markdown_bullets(
        report["md"], "Decisions still open for the plan owner") == ["inventory: keep or drop the 2019 drafts?"]
    assert "NOT AVAILABLE YET" in browser.find_element(By.ID, "stage-3").text and "— NOT AVAILABLE YET" in report["md"]
    # A chart of 30 years shows the largest 15 and one "other" bar.
    chart = next(f for f in by_css(browser, "figure.chart") if f.text.startswith("documents per year"))
    assert len(chart.find_elements(By.CSS_SELECTOR, "g.bar")) == 16
    assert len(chart.find_elements(By.CSS_SELECTOR, "g.bar.other")) == 1
    assert "Chart: documents per year" in report["md"] and "| other (15 more) |" in report["md"]


def test_numbers_read_as_people_read_them() -> None:
    assert human_bytes(0) == "0 B" and human_bytes(1023) == "1,023 B" and human_bytes(1536) == "1.5 KiB"
    assert human_bytes(5 * 1024 ** 3) == "5.0 GiB" and human_bytes(3 * 1024 ** 2) == "3.0 MiB"
    assert format_value("documents", 1234567) == "1,234,567"
    assert format_value("content_bytes_recorded", 5 * 1024 ** 3) == "5.0 GiB (5,368,709,120 bytes)"
    assert human_seconds(42.25) == "42.2 s" and human_seconds(7384) == "2 h 3 min"
    assert format_value("hash_seconds", 90061.0) == "1 d 1 h"
    rows, other = chart_rows({str(i): float(i) for i in range(16)})
    assert len(rows) == 16 and not other
    rows, other = chart_rows({str(i): float(i) for i in range(40)})
    assert other and rows[0] == ("39", 39.0) and rows[-1] == ("other (25 more)", float(sum(range(25))))
