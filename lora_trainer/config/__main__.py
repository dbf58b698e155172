"""`python -m lora_trainer.config --markdown [PATH]`."""

import sys

from lora_trainer.config.docs import main

raise SystemExit(main(sys.argv[1:]))
