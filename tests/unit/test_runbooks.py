"""Every alert shipped in deploy/ links a runbook page of the documentation site.

Each alerting rule of every PrometheusRule under deploy/ must carry ``annotations.runbook_url``; the
URL must start with mkdocs.yml's ``site_url`` (where the site is published; an overlay may point it
elsewhere, see docs/operations/kubernetes.md) and name a page that exists under docs/ and is about
that alert. ``mkdocs build --strict`` (CI) checks the pages' own links.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


class _MkDocsLoader(yaml.SafeLoader):
    """Reads mkdocs.yml, whose ``!!python/name:`` tags a safe loader refuses; their values are not needed."""


_MkDocsLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def site_url() -> str:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_MkDocsLoader)  # noqa: S506 - a safe loader
    url = config["site_url"]
    assert isinstance(url, str)
    assert url.endswith("/"), "site_url must end with / (page URLs are appended to it)"
    return url


def shipped_alerts() -> list[tuple[str, dict[str, Any]]]:
    """(file, rule) for every alerting rule of every PrometheusRule document under deploy/."""
    found = []
    for path in sorted([*(ROOT / "deploy").rglob("*.yaml"), *(ROOT / "deploy").rglob("*.yml")]):
        for document in yaml.safe_load_all(path.read_text()):
            if not isinstance(document, dict) or document.get("kind") != "PrometheusRule":
                continue
            for group in document.get("spec", {}).get("groups", []):
                for rule in group.get("rules", []):
                    if "alert" in rule:
                        found.append((str(path.relative_to(ROOT)), rule))
    return found


def runbook_page(url: str, site: str) -> Path | None:
    """The docs/ source of the page at ``url`` (MkDocs' directory URLs: ``a/b/`` is ``a/b.md`` or
    ``a/b/index.md``), or None."""
    relative = url.removeprefix(site).strip("/")
    for candidate in (DOCS / f"{relative}.md", DOCS / relative / "index.md"):
        if relative and candidate.is_file():
            return candidate
    return None


def runbook_problems(rule: dict[str, Any], site: str) -> list[str]:
    name = rule["alert"]
    url = (rule.get("annotations") or {}).get("runbook_url")
    if not url:
        return [f"{name}: no annotations.runbook_url"]
    if not url.startswith(site):
        return [f"{name}: runbook_url {url} does not start with mkdocs.yml's site_url {site}"]
    page = runbook_page(url, site)
    if page is None:
        return [f"{name}: runbook_url {url} names no page under docs/"]
    title = next((line for line in page.read_text().splitlines() if line.startswith("# ")), "")
    if name not in title:
        return [f"{name}: {page.relative_to(ROOT)}'s title {title!r} does not name the alert"]
    return []


def test_deploy_ships_alerts() -> None:
    alerts = {rule["alert"] for _, rule in shipped_alerts()}
    assert "LiveKitSignalingNotReady" in alerts
    assert len(alerts) >= 10


@pytest.mark.parametrize(
    ("path", "rule"), shipped_alerts(), ids=lambda value: value["alert"] if isinstance(value, dict) else ""
)
def test_every_shipped_alert_links_its_runbook(path: str, rule: dict[str, Any]) -> None:
    assert runbook_problems(rule, site_url()) == [], path


def test_every_runbook_page_belongs_to_a_shipped_alert() -> None:
    site = site_url()
    linked = {runbook_page(rule["annotations"]["runbook_url"], site) for _, rule in shipped_alerts()}
    pages = {page for page in (DOCS / "runbooks").glob("*.md") if page.name != "index.md"}
    assert pages - linked == set(), "runbook pages no alert links (a renamed or removed alert?)"


def test_the_runbook_checks_catch_mistakes() -> None:
    site = "https://docs.example.org/signaling/"
    page = "runbooks/livekit-signaling-not-ready/"

    def rule(alert: str, url: str | None) -> dict[str, Any]:
        return {"alert": alert, "annotations": {} if url is None else {"runbook_url": url}}

    assert runbook_problems(rule("LiveKitSignalingNotReady", f"{site}{page}"), site) == []
    assert runbook_problems(rule("LiveKitSignalingNotReady", None), site) == [
        "LiveKitSignalingNotReady: no annotations.runbook_url"
    ]
    elsewhere = rule("LiveKitSignalingNotReady", f"https://elsewhere.example.org/{page}")
    assert "does not start with" in runbook_problems(elsewhere, site)[0]
    missing = rule("LiveKitSignalingNotReady", f"{site}runbooks/no-such-page/")
    assert "names no page" in runbook_problems(missing, site)[0]
    another_alerts_page = rule("LiveKitSignalingAbsent", f"{site}{page}")
    assert "does not name the alert" in runbook_problems(another_alerts_page, site)[0]
