"""`python -m lora_trainer ...` entry point."""

import os
import sys

from lora_trainer.cli import main

code = main()
if sys.argv[1:2] == ["download"]:
    # A finished download has closed, synced and renamed all it wrote (the queue file too) and joined
    # its transfer threads; it registers no exit handlers. The interpreter's teardown of its modules
    # costs ~10 ms, a twentieth of a 200 MiB download over loopback: flush the output and leave.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: the ordinary exit reports it
        raise SystemExit(code) from None
    os._exit(code)
raise SystemExit(code)
