"""Test-only pacing for the browser flow, loaded by the app the tests start (on its PYTHONPATH).

A tiny run can finish before a browser has reloaded the page, so "reload mid-run" would depend on the
machine's speed. With `LT_TEST_STEP_GATE` naming a file, the app's training holds after each step's
progress event while that file exists (at most 10 minutes): the test creates the file before Train,
acts mid-run, presses Stop, then removes the file and the run stops at that step. Nothing else of the
app changes; without the file the run goes at full speed.
"""

import os
import time

GATE = os.environ.get("LT_TEST_STEP_GATE")

if GATE:
    from lora_trainer.train import engine

    _progress = engine.Engine._progress

    def _held_progress(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        _progress(self, *args, **kwargs)
        deadline = time.monotonic() + 600
        while os.path.exists(GATE) and time.monotonic() < deadline:
            time.sleep(0.05)

    engine.Engine._progress = _held_progress
