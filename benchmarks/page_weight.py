"""What a browser fetches to show a track page with its charts: headless Chromium (Debian's
chromium + chromedriver) loads the page from a running site, waits for the first chart, and prints
the bytes transferred (the page and each resource, from the Resource Timing API) and the load time,
five loads each with a cold cache, with the load average beside them.

    python benchmarks/page_weight.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

MEASURE = """const nav = performance.getEntriesByType("navigation")[0];
return {page: nav.transferSize, load_ms: nav.loadEventEnd - nav.startTime,
        resources: performance.getEntriesByType("resource").map(
            (r) => [r.name, r.transferSize, r.decodedBodySize])};"""


def load_once(url: str) -> dict:
    """One cold load (a new browser profile) of ``url``: transferred bytes and load time."""
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1400,1800"):  # fmt: skip
        options.add_argument(flag)
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, ".js-plotly-plot")))
        wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
        measured = driver.execute_script(MEASURE)
    finally:
        driver.quit()
    measured["total"] = measured["page"] + sum(r[1] for r in measured["resources"])
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--track", default="demo-unet-phantom-w8a8-simulated")
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    url = f"{args.url.rstrip('/')}/tracks/{args.track}/"
    loads = []
    for _ in range(args.loads):
        loads.append(load_once(url))
        print(f"  {loads[-1]['total']:>9} bytes, {loads[-1]['load_ms']:7.0f} ms "
              f"(load {os.getloadavg()[0]:.2f})")  # fmt: skip
    for name, transferred, decoded in loads[-1]["resources"]:
        print(f"  {transferred:>9} of {decoded:>9} bytes  {name}")
    print(
        f"{url}: {statistics.median(m['total'] for m in loads):.0f} bytes transferred, "
        f"loaded in {statistics.median(m['load_ms'] for m in loads):.0f} ms (median of "
        f"{len(loads)} cold loads)"
    )


if __name__ == "__main__":
    main()
