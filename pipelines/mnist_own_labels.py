"""The MNIST test set's own labels (no synthetic noise): what the defaults flag, and the review page's picture.

    python pipelines/mnist_own_labels.py                       # about 2 minutes on 2 CPU cores
    python pipelines/mnist_own_labels.py --out runs/mnist_own --screenshot docs/review.png

Runs the CLI's defaults on the 10,000 published test images and labels (``--test-fraction 0``):
``cleanpipe crossval``, ``cleanpipe prune`` and ``cleanpipe review --also N``, prints how many are flagged
and the flagged rows, and photographs the top of the review page in headless Chromium (Debian's
``chromium`` and ``chromium-driver``, through selenium) at 1280 px wide.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def cleanpipe(*args) -> None:
    cmd = [sys.executable, "-m", "cleanpipe", *map(str, args)]
    print("$", "cleanpipe", *map(str, args), flush=True)
    subprocess.run(cmd, check=True)


def screenshot(page: Path, png: Path, height: int) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as profile:
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-background-networking", f"--window-size=1280,{height}",
                    f"--user-data-dir={profile}"):
            options.add_argument(arg)
        drv = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            drv.get(page.resolve().as_uri())
            WebDriverWait(drv, 30).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
            png.parent.mkdir(parents=True, exist_ok=True)
            drv.save_screenshot(str(png))
        finally:
            drv.quit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist-test")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "mnist_own")
    ap.add_argument("--also", type=int, default=0, help="review --also N (the next-worst unflagged examples)")
    ap.add_argument("--screenshot", type=Path, default=None, help="PNG of the review page's top")
    ap.add_argument("--height", type=int, default=1400, help="the screenshot's height in px")
    args = ap.parse_args()
    cleanpipe("crossval", args.out, "--dataset", "mnist", "--data", args.data, "--test-fraction", 0)
    cleanpipe("prune", args.out)
    cleanpipe("review", args.out, "--also", args.also)
    report = pd.read_csv(args.out / "prune" / "label_issues.csv", dtype={"id": str})
    flagged = report[report["is_label_issue"]]
    print(f"\n{len(flagged)} of {len(report):,} flagged")
    print(flagged[["id", "given_label", "suggested_label", "label_quality"]].to_string(index=False))
    if args.screenshot:
        screenshot(args.out / "review" / "review.html", args.screenshot, args.height)
        print(f"wrote {args.screenshot}")


if __name__ == "__main__":
    main()
