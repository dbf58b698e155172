"""Command-line flags LoRA Trainer adds to the WebUI (read before the WebUI parses its arguments)."""


def preload(parser):
    parser.add_argument("--lora-trainer-no-api", action="store_true", default=False,
                        help="LoRA Trainer: do not add the /lora-trainer/v1/ HTTP routes")
    parser.add_argument("--lora-trainer-work-dir", type=str, default=None,
                        help="LoRA Trainer: folder for runs, logs, resumable states and uploads "
                             "(default: outputs/lora-trainer)")
    parser.add_argument("--lora-trainer-verify-weights", action="store_true", default=False,
                        help="LoRA Trainer: hash the whole model before and after each training to prove it is "
                             "unchanged (slow on big models; a cheap in-place-write check always runs)")
