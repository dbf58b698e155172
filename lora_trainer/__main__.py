"""`python -m lora_trainer ...` entry point."""

from lora_trainer.cli import main

raise SystemExit(main())
