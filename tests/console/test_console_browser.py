"""The console in a real browser: Debian's Chromium driven by Playwright, against ``livekit-signaling dev``.

Nothing is downloaded: Playwright is told to use ``/usr/bin/chromium`` (``apt-get install -y chromium``;
``.ci/run`` installs it). The screenshot of the final state is saved to the test log directory; the
README's ``docs/console.png`` is a copy of one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from testkit.processes import LOG_DIR, DevProcess

CHROMIUM = Path("/usr/bin/chromium")
# Headless as root needs --no-sandbox; the rest keeps Chromium from reaching out or doing background work.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = LOG_DIR / "console.png"
SCREENSHOT_NARROW = LOG_DIR / "console-narrow.png"
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed ({CHROMIUM} is missing): run `apt-get install -y chromium` "
            "(.ci/run does); the console's browser test needs it and downloads nothing."
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    # Generous: the machine is shared, and how fast the page updates is not what this test is about.
    expect.set_options(timeout=TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    yield page
    context.close()
    assert errors == [], f"the page reported errors: {errors}"


def send(page: Page, participant: str, role: str, action: str, *, unrestricted: str | None = None) -> None:
    """Fill the command form as a person would (by the fields' labels) and send it."""
    page.get_by_label("Participant", exact=True).fill(participant)
    page.get_by_label("Role", exact=True).select_option(role)
    page.get_by_label("Command", exact=True).select_option(action)
    if unrestricted is not None:
        page.get_by_label("Unrestricted participants", exact=True).fill(unrestricted)
    page.get_by_role("button", name="Send", exact=True).click()
    newest = page.locator("#commands > li").first
    expect(newest).to_have_attribute("data-action", action)
    expect(newest).to_have_attribute("data-participant", participant)


def test_restrictions_from_the_page_take_a_microphone_away(dev: DevProcess, page: Page, room: str) -> None:
    page.goto(dev.console_url)
    expect(page.locator("#connection")).to_have_text("live")
    page.get_by_label("Room", exact=True).fill(room)

    send(page, "moderator", "moderator", "join")
    send(page, "alice", "user", "join")
    send(page, "bob", "user", "join")
    article = page.locator(f'article[data-room="{room}"]')
    for participant in ("moderator", "alice", "bob"):
        row = article.locator(f'tr[data-identity="{participant}"]')
        expect(row).to_contain_text("not connected")
        page.get_by_role("button", name=f"Connect {participant} to LiveKit").click()
        expect(row).to_have_attribute("data-connected", "true")
        page.get_by_role("button", name=f"Publish microphone as {participant}").click()
        expect(row.locator(".tracks")).to_have_attribute("data-sources", "microphone")

    send(page, "moderator", "moderator", "enable_microphone_restrictions", unrestricted="alice")

    bob = article.locator('tr[data-identity="bob"]')
    expect(bob.locator(".tracks")).to_have_attribute("data-sources", "")
    expect(bob.locator(".permission")).to_have_attribute(
        "data-sources", "camera screen_share screen_share_audio"
    )
    expect(article.locator('tr[data-identity="alice"] .tracks')).to_have_attribute(
        "data-sources", "microphone"
    )
    expect(article.locator('tr[data-identity="moderator"] .tracks')).to_have_attribute(
        "data-sources", "microphone"
    )
    expect(article.locator(".restrictions")).to_have_text(
        "Microphone restrictions: enabled, unrestricted: alice"
    )

    page.get_by_label("Show events of room", exact=True).select_option(room)
    restriction_events = page.locator('#events > li[data-message="microphone_restrictions_enabled"]')
    expect(restriction_events).to_have_count(3)
    recipients = {restriction_events.nth(i).get_attribute("data-recipient") for i in range(3)}
    assert recipients == {"moderator", "alice", "bob"}
    answers = page.locator("#commands > li").first.locator(".answers > li")
    expect(answers).to_have_count(3)

    # Bob's client tries to get its microphone back, as LiveKit clients do: publish a new one. Refused.
    page.get_by_role("button", name="Try to unmute the microphone of bob").click()
    expect(page.locator("#client-status")).to_have_text(
        "bob: LiveKit refused: participant 'bob' may not publish microphone"
    )
    expect(bob.locator(".tracks")).to_have_attribute("data-sources", "")

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # A narrow window: one column, nothing wider than the window.
    page.set_viewport_size({"width": 390, "height": 844})
    expect(bob.locator(".tracks")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(SCREENSHOT_NARROW))


WATERFALL_SCREENSHOT = LOG_DIR / "tracing-waterfall.png"


def name(span: Locator) -> str:
    return span.locator(".span-name").inner_text()


def test_a_sent_command_shows_its_trace_as_a_waterfall(dev: DevProcess, page: Page, room: str) -> None:
    """The console starts each command's trace (its own producer span, the ``traceparent`` it publishes)
    and draws the trace's spans as they end: the service's consumer span under it, the LiveKit calls and
    the publication of the events under that. docs/tracing-waterfall.png is a copy of its screenshot."""
    page.goto(dev.console_url)
    expect(page.locator("#connection")).to_have_text("live")
    page.get_by_label("Room", exact=True).fill(room)
    article = page.locator(f'article[data-room="{room}"]')  # the page also shows the module's other rooms
    for participant, role in (("moderator", "moderator"), ("alice", "user"), ("bob", "user")):
        send(page, participant, role, "join")
        row = article.locator(f'tr[data-identity="{participant}"]')
        article.get_by_role("button", name=f"Connect {participant} to LiveKit").click()
        expect(row).to_have_attribute("data-connected", "true")
        article.get_by_role("button", name=f"Publish microphone as {participant}").click()
        expect(row.locator(".tracks")).to_have_attribute("data-sources", "microphone")

    send(page, "moderator", "moderator", "enable_microphone_restrictions", unrestricted="alice")

    command = page.locator("#commands > li").first
    expect(command.locator(".answers > li")).to_have_count(3)
    spans = command.locator(".waterfall li")
    expected = [
        ("0", "producer", f"publish {dev.names.command_exchange}"),
        ("1", "consumer", f"process {dev.names.command_exchange}"),
        ("2", "client", "POST /twirp/livekit.RoomService/ListParticipants"),
        ("2", "client", "POST /twirp/livekit.RoomService/UpdateParticipant"),
        ("2", "producer", f"publish {dev.names.event_exchange}"),
    ]
    expect(spans).to_have_count(len(expected))
    rows = [spans.nth(i) for i in range(len(expected))]
    shown = [(row.get_attribute("data-depth"), row.get_attribute("data-kind"), name(row)) for row in rows]
    assert shown == expected
    trace_id = command.locator(".waterfall").get_attribute("data-trace-id")
    assert trace_id and len(trace_id) == 32
    WATERFALL_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    command.screenshot(path=str(WATERFALL_SCREENSHOT))
