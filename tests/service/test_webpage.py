"""The operator's page in a real headless Chromium, against the real controller and a real
``mxrc rt``: the state and the chart render, the page is read-only until the token is
pasted, start makes it RUNNING, a refused command shows the legal ones, and the
screenshot is a real picture."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from tests.cdp import Page, chromium, distinct_colours, png_pixels, require_chromium
from tests.configs import TOLERANT_TIMING
from tests.service.api_support import Served, serve, until

WIDTH, HEIGHT = 1280, 1000


def js(value: object) -> str:
    return json.dumps(value)


async def text_of(page: Page, selector: str) -> str:
    return str(await page.evaluate(f"document.querySelector({js(selector)}).textContent"))


async def wait_state(page: Page, state: str, timeout: float = 10) -> None:
    await page.wait_for(
        f"document.getElementById('state').dataset.state === {js(state)}"
        f" && document.getElementById('chart').dataset.state === {js(state)}",
        timeout,
    )


async def click(page: Page, selector: str) -> None:
    await page.evaluate(f"document.querySelector({js(selector)}).click()")


async def paste_token(page: Page, token: str) -> None:
    await page.evaluate(f"document.getElementById('token').value = {js(token)}")
    await click(page, "#use-token")


async def healthy(s: Served) -> bool:
    r = await s.client.get("/health")
    return bool((await r.json())["status"] != "unhealthy")


@pytest.mark.timeout(150)
def test_operator_page_in_headless_chromium(tmp_path: Path) -> None:
    require_chromium()  # fails (not skips) with the fix when the browser is missing

    async def main() -> None:
        async with (
            serve(tmp_path, with_rt=True, sections=TOLERANT_TIMING) as s,
            chromium(tmp_path / "chromium-profile") as browser,
        ):
            await s.until_state("READY", 30)
            page = await browser.new_page(WIDTH, HEIGHT)
            await page.navigate(s.url + "/")

            # the state, the node, and the chart picture with the state highlighted
            await wait_state(page, "READY")
            assert await text_of(page, "#node") == "n1"
            assert await text_of(page, "#chart-ref") == s.controller.chart.ref
            svg = await page.evaluate("document.querySelector('#chart svg').outerHTML")
            assert "current: READY" in svg and "#08306b" in svg
            nodes = await page.evaluate(
                "[...document.querySelectorAll('#chart svg g.node title')].map(t => t.textContent)"
            )
            assert {"INIT", "READY", "RUNNING", "SAFE_MODE"} <= set(nodes)
            assert await text_of(page, "#token-value") != "–"
            assert (await text_of(page, "#lease")).endswith(" s")

            # read-only until the token is pasted, and it says so
            assert await page.evaluate("document.getElementById('mode').dataset.mode") == (
                "read-only"
            )
            assert "Read-only" in await text_of(page, "#mode")
            assert await page.evaluate(
                "[...document.querySelectorAll('button.command')].every(b => b.disabled)"
            )

            # a wrong token: 401 on the page, back to read-only, nothing changed
            await paste_token(page, "not-the-token")
            await click(page, "button[data-command=start]")
            await page.wait_for(
                "document.getElementById('command-result').textContent.startsWith('401')"
            )
            assert await page.evaluate("document.getElementById('mode').dataset.mode") == (
                "read-only"
            )
            assert (await s.json("/v1/state"))["state"] == "READY"

            # the real token: commands enabled, kept in this tab's sessionStorage only
            await paste_token(page, s.token)
            await page.wait_for("document.getElementById('mode').dataset.mode === 'commands'")
            assert await page.evaluate("sessionStorage.getItem('mxrc-api-token')") == s.token
            assert await page.evaluate("localStorage.length") == 0
            assert await page.evaluate("document.getElementById('token').value") == ""

            await until(lambda: healthy(s), 20, "health other than unhealthy")
            await click(page, "button[data-command=start]")
            await wait_state(page, "RUNNING")
            assert (await s.json("/v1/state"))["state"] == "RUNNING"
            result = await text_of(page, "#command-result")
            assert "READY → RUNNING" in result, result
            await page.wait_for(
                "[...document.querySelectorAll('#events tr[data-type=transition]')]"
                ".some(r => r.textContent.includes('start: READY → RUNNING'))"
            )
            # live cycle figures and their sparklines
            await page.wait_for(
                "document.getElementById('cycle-line').textContent.includes('driving')", 15
            )
            await page.wait_for("document.getElementById('wake-p99').textContent !== '–'")
            await asyncio.sleep(1.5)  # a few samples for the sparklines

            # a refused command: 409 with what is legal now
            await click(page, "button[data-command=reset]")
            await page.wait_for(
                "document.getElementById('command-result').dataset.outcome === 'rejected'"
            )
            refused = await text_of(page, "#command-result")
            assert refused.startswith("409") and "Legal now: stop, fault" in refused, refused

            png = await page.screenshot()
            shot = tmp_path / "operator-page.png"
            shot.write_bytes(png)
            width, height, bpp, rows = png_pixels(png)
            assert (width, height) == (WIDTH, HEIGHT)
            colours = distinct_colours(rows, bpp)
            assert colours > 100, f"{shot}: only {colours} colours; a blank page?"
            samples = Counter(
                row[i : i + bpp] for row in rows[::10] for i in range(0, len(row), bpp * 10)
            )
            dominant = samples.most_common(1)[0][1] / samples.total()
            assert dominant < 0.9, f"{shot}: {dominant:.0%} of the page is one colour"

    asyncio.run(asyncio.wait_for(main(), 140))
