r"""The README's screenshot of the web app: real server, headless Chromium, one upload per class.

  python benchmarks/serve_screenshot.py --model_path=workspace/quickstart/model/best.keras \
      --images_dir=workspace/quickstart/data/test --output=benchmarks/serve_page.png

Starts `python -m xray_tfdata.serve` on a free port, opens the page, selects the first image of
each class folder under --images_dir, waits for the answers and saves a PNG of the page. The
default images are the quickstart's synthetic X-rays (the real sample in ../shared is not copied
into the repository, not even as a screenshot).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FLAGS = flags.FLAGS
flags.DEFINE_string("model_path", "workspace/quickstart/model/best.keras",
                    "Export dir or .keras (a .keras adds the Grad-CAM overlays).")
flags.DEFINE_string("images_dir", "workspace/quickstart/data/test",
                    "A folder with NORMAL/, COVID19/, PNEUMONIA/ subfolders.")
flags.DEFINE_string("output", "benchmarks/serve_page.png", "Where the PNG goes.")


def main(argv: list[str]) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    from xray_tfdata import files  # noqa: PLC0415
    from xray_tfdata.labels import CLASS_NAMES  # noqa: PLC0415
    from xray_tfdata.serving.web import launch  # noqa: PLC0415

    paths = [sorted((Path(FLAGS.images_dir) / name).glob("*.*"))[0].resolve()
             for name in CLASS_NAMES]  # chromedriver wants absolute paths
    server = launch.start(FLAGS.model_path, cwd=str(REPO), env={"PYTHONPATH": str(REPO)})
    try:
        with tempfile.TemporaryDirectory() as profile:
            driver = launch.headless_chrome(profile, window=(1000, 1230))
            try:
                driver.get(server.url + "/")
                driver.find_element(By.ID, "image").send_keys("\n".join(map(str, paths)))
                WebDriverWait(driver, 60).until(lambda d: d.find_element(
                    By.ID, "results").get_attribute("data-done") == str(len(paths)))
                # Grow the window to the whole page, so the screenshot shows every card.
                height = driver.execute_script("return document.documentElement.scrollHeight")
                driver.set_window_size(1000, height + 140)  # + the headless window's chrome
                out = files.write_atomic(FLAGS.output, driver.get_screenshot_as_png())
                for card in driver.find_elements(By.CSS_SELECTOR, "#results .result"):
                    print(" | ".join(card.text.splitlines()))
                print(f"wrote {out}")
            finally:
                driver.quit()
    finally:
        server.stop()


if __name__ == "__main__":
    app.run(main)
