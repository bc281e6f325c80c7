"""Open a page in a real headless Chromium and report, for every <img>, whether it loaded.

Chromium comes from the system's packages (``make test`` installs it); without it a test fails
in CI (CI=true) and is skipped elsewhere.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# Flags that keep a headless Chromium off the network (this machine has none) and quiet.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
)
# Appended to a copy of the page: after load, record each image's source and whether it
# decoded (naturalWidth > 0), where --dump-dom can read it.
_PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => [i.getAttribute("src").slice(0, 80),
                                                i.complete && i.naturalWidth > 0]);
  document.documentElement.setAttribute("data-images", JSON.stringify(images));
});
</script>"""


def chromium() -> str:
    """The Chromium executable; fails in CI when missing, skips elsewhere."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "Chromium not found: `make test` installs it (apt-get install chromium)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def images_in_page(page: Path) -> list[tuple[str, bool]]:
    """(src, loaded) for every image of ``page``, as a real browser sees it."""
    text = page.read_text(encoding="utf-8")
    probe_page = page.with_name(f"_probe_{page.name}")
    probe_page.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory() as profile:
            run = subprocess.run(
                [
                    chromium(),
                    *FLAGS,
                    f"--user-data-dir={profile}",
                    "--dump-dom",
                    probe_page.resolve().as_uri(),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
    finally:
        probe_page.unlink()
    match = re.search(r'data-images="([^"]*)"', run.stdout)
    assert match, f"the page did not finish loading: {run.stderr[-1500:]}"
    return [tuple(item) for item in json.loads(html.unescape(match.group(1)))]
