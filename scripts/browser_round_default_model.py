"""The new user's browser path on the default model (SmolLM2-135M-Instruct), by hand: a fresh database → Start →
the concise demo → Run a round with the console's defaults → Dashboard → Promote → Playground, in headless
Chromium against a real `alt serve`. The same flow as tests/test_browser_round.py (which uses a tiny model);
prints the total time and the Dashboard's rows, and keeps the screenshots.

    flock /work/experiment.lock python scripts/browser_round_default_model.py --out runs/browser-default

It loads the default model for tens of minutes (a round samples 32 prompts × 4 at 160 tokens, trains, and
evaluates the base and the new version): run it under the machine's experiment lock.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]


def main() -> int:
    from conftest import LiveServer
    from playwright.sync_api import sync_playwright
    from test_browser_round import PASSWORD, run_the_round

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/browser-default", help="folder for the database, models, screenshots")
    p.add_argument("--timeout", type=float, default=7200, help="seconds the round may take")
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = os.environ.get("ALT_CACHE_DIR") or os.path.expanduser("~/.cache/alt-studio")  # the converted model
    t0 = time.monotonic()
    server = LiveServer(str(out / "studio.db"), "default", out, start_timeout=600,
                        env={"ALT_ADMIN_PASSWORD": PASSWORD, "ALT_CACHE_DIR": cache,
                             "ALT_MODELS_DIR": str(out / "models")})
    try:
        with sync_playwright() as pw:
            chromium = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                          args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            result = run_the_round(server.url, chromium, out, round_timeout=args.timeout)
            chromium.close()
    finally:
        server.stop()
    result["total_s_with_server_start"] = time.monotonic() - t0
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
