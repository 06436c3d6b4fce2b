"""Issue 15's targets for the HTML report: the quick suite's page under 5 MB, open in under 2 s.

    .venv/bin/python benchmarks/report_page.py [--db results/dlarena.db] [--run ID] [--opens 5]

Writes the run's HTML report (the latest run of the database by default: after `make demo`, the quick
suite's) into a temporary folder, then opens it ``--opens`` times in a fresh headless Chromium, offline,
from file:// (tests/browser.py: the distribution's browser and driver), and prints a Markdown table: the
page's size, the time to write it, and the load time of each opening, read by the page itself
(report.js) as the browser's clock from the start of navigation to the last chart drawn, against the
targets; and when the charts of the first screen were drawn (report.js draws them first). Also the
number of charts and cells. Always exits 0: this is a report; not part of `make test`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import browser  # tests/browser.py, found through the path above
from dlarena import api

SIZE_TARGET_BYTES = 5 * 2**20  # issue 15: the quick suite's report under 5 MB
LOAD_TARGET_S = 2.0  # issue 15: opens in under 2 s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="results/dlarena.db", help="results database (default: %(default)s)")
    parser.add_argument("--run", help="run id (default: the latest)")
    parser.add_argument("--opens", type=int, default=5, help="fresh browsers to open the page in (default: 5)")
    args = parser.parse_args()
    reason = browser.missing()
    if reason is not None:
        print(f"cannot measure the load time: {reason}", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "report.html"
        start = time.perf_counter()
        text = api.report_page(db=args.db, run_id=args.run)
        write_s = time.perf_counter() - start
        page.write_text(text, encoding="utf-8")
        loads, firsts = [], []
        for index in range(args.opens):
            with browser.chromium(Path(folder) / f"chromium-{index}") as driver:
                loads.append(browser.open_report(driver, page))
                firsts.append(browser.first_screen(driver))
                charts = int(driver.execute_script("return document.body.dataset.chartsDrawn"))
                cells = int(driver.execute_script("return document.querySelectorAll('tr.cell-row').length"))
    size = len(text.encode("utf-8"))
    load = statistics.median(loads)
    print(f"| figure | measured | target | met |\n|---|---|---|---|\n"
          f"| page size | {size / 2**20:.2f} MiB ({charts} charts, {cells} cells) |"
          f" < {SIZE_TARGET_BYTES / 2**20:.0f} MiB | {'yes' if size < SIZE_TARGET_BYTES else 'NO'} |\n"
          f"| load time, median of {len(loads)} | {load:.2f} s (each: {', '.join(f'{s:.2f}' for s in loads)}) |"
          f" < {LOAD_TARGET_S:.0f} s | {'yes' if load < LOAD_TARGET_S else 'NO'} |\n"
          f"| first screen drawn, median | {statistics.median(firsts):.2f} s | | |\n"
          f"| time to write the page | {write_s:.1f} s | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
