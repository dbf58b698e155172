"""`python -m lora_trainer caption DIR`: auto-caption a dataset folder (BLIP, WD14, Florence-2 and other
vision-language models, WebUI host)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lora_trainer.caption.support import DETAILS, PRECISIONS

CAPTIONER_CHOICES = ("blip", "wd14", "florence2", "vlm", "host")
BLIP_DEFAULTS = {"max_length": 40, "min_length": 5, "num_beams": 3}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "caption", help="auto-caption a dataset folder (BLIP, WD14 tags, Florence-2 / VLM prose, WebUI interrogators)",
        description="Write <stem>.txt next to each image and/or metadata.csv (filename,prompt).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("dir", help="dataset folder (images directly or in kohya N_name/ folders)")
    parser.add_argument("--format", choices=("txt", "csv", "both"), default="txt",
                        help="write <stem>.txt files, metadata.csv, or both")
    parser.add_argument("--csv", default=None, help="metadata.csv path (default: DIR/metadata.csv)")
    parser.add_argument("--report", action="store_true",
                        help="only check the images (corrupt, small, odd aspect, duplicates) and list tag counts")
    add_captioner_args(parser)
    parser.set_defaults(func=run)


def add_captioner_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by `caption` and `auto_label`."""
    parser.add_argument("--captioner", choices=CAPTIONER_CHOICES, default="blip")
    parser.add_argument("--model", default=None,
                        help="model folder or hub id (blip: Salesforce/blip-image-captioning-base, wd14: "
                             "SmilingWolf/wd-v1-4-convnext-tagger-v2, florence2: florence-community/Florence-2-base "
                             "(from the local cache only), vlm: required, a folder of an image-text-to-text "
                             "model; host: blip or deepbooru)")
    parser.add_argument("--trigger", default="", help="word(s) put first in every new caption")
    parser.add_argument("--mode", choices=("append", "overwrite", "skip-existing"), default="skip-existing",
                        help="what to do with images that already have a caption")
    parser.add_argument("--caption-extension", default=".txt")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--offline", action="store_true", help="never download; hub ids only from the local cache")
    blip = parser.add_argument_group("blip, florence2 and vlm options")
    blip.add_argument("--prompt", default="", help="blip: text the caption starts from, e.g. 'a photo of'; "
                      "vlm: the instruction (replaces the --detail prompt); florence2: a task token")
    blip.add_argument("--detail", choices=DETAILS, default="detailed",
                      help="florence2/vlm: how long a description (<CAPTION>, <DETAILED_CAPTION>, "
                           "<MORE_DETAILED_CAPTION> for florence2)")
    blip.add_argument("--max-length", type=int, default=None,
                      help="max new tokens (default: blip 40; florence2/vlm 48/160/384 by --detail)")
    blip.add_argument("--min-length", type=int, default=None, help="min new tokens (default: blip 5, else 0)")
    blip.add_argument("--num-beams", type=int, default=None,
                      help="beam search width, 1 = greedy (default: blip 3, florence2 3, vlm 1)")
    blip.add_argument("--precision", choices=PRECISIONS, default="auto",
                      help="florence2/vlm weights: auto = bf16 (fp16 on GPUs without bf16) on a GPU, fp32 on CPU")
    wd14 = parser.add_argument_group("wd14 options")
    wd14.add_argument("--general-threshold", type=float, default=0.35)
    wd14.add_argument("--character-threshold", type=float, default=0.85)
    wd14.add_argument("--include-ratings", action="store_true", help="add the top rating tag (off by default)")
    wd14.add_argument("--exclude-tags", default="", help="comma-separated tags never written")
    wd14.add_argument("--always-first-tags", default="", help="comma-separated tags moved to the front if found")
    wd14.add_argument("--keep-underscores", action="store_true", help="write long_hair, not long hair")
    wd14.add_argument("--max-tags", type=int, default=0, help="keep at most N tags (0 = all)")


def captioner_options(args: argparse.Namespace) -> dict[str, Any]:
    common = {"model": args.model, "batch_size": args.batch_size}
    generation = {"max_length": args.max_length, "min_length": args.min_length, "num_beams": args.num_beams}
    if args.captioner == "blip":
        given = {k: v for k, v in generation.items() if v is not None}
        return {**common, "device": args.device, "local_only": args.offline, "prompt": args.prompt,
                **BLIP_DEFAULTS, **given}
    if args.captioner in ("florence2", "vlm"):
        return {**common, "device": args.device, "prompt": args.prompt, "detail": args.detail,
                "precision": args.precision, **generation, "min_length": args.min_length or 0}
    if args.captioner == "wd14":
        return {**common, "device": args.device, "local_only": args.offline,
                "general_threshold": args.general_threshold, "character_threshold": args.character_threshold,
                "include_ratings": args.include_ratings, "exclude_tags": args.exclude_tags,
                "always_first_tags": args.always_first_tags, "underscores_to_spaces": not args.keep_underscores,
                "max_tags": args.max_tags}
    return common


class TqdmSink:
    """Renders caption events as a tqdm bar on stderr; messages go above the bar."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, event: Any) -> None:
        from tqdm import tqdm

        data = event.data
        if event.type == "progress":
            if self.bar is None:
                self.bar = tqdm(total=data["total_steps"], unit="img", file=sys.stderr, dynamic_ncols=True)
            self.bar.update(data["step"] - self.bar.n)
            self.bar.set_postfix_str(data.get("file", ""), refresh=False)
        elif event.type in ("status", "log"):
            tqdm.write(data.get("message", ""), file=sys.stderr)
        elif event.type in ("done", "stopped"):
            if self.bar is not None:
                self.bar.close()
            print(data.get("message", ""))


def caption_folder(args: argparse.Namespace, root: str, fmt: str, csv_path: str | None) -> int:
    """Shared by `caption` and `auto_label`: build the captioner, run it, render progress."""
    from lora_trainer.caption import make_captioner
    from lora_trainer.caption.run import caption_dataset
    from lora_trainer.errors import UserError

    try:
        if not Path(root).is_dir():
            raise UserError(f"dataset folder '{root}' does not exist")
        captioner = make_captioner(args.captioner, **captioner_options(args))
        result = caption_dataset(root, captioner, mode=args.mode, fmt=fmt, trigger=args.trigger,
                                 csv_path=csv_path, caption_ext=args.caption_extension, emit=TqdmSink())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if result.failed else 0


def report(root: str, fmt: str, csv_path: str | None) -> int:
    from lora_trainer.data.tools import CaptionStore, check_images, tag_frequency
    from lora_trainer.errors import UserError

    try:
        checks = check_images(root)
        store = CaptionStore(root, fmt="auto" if fmt == "txt" else fmt, csv_path=csv_path)
        tags = tag_frequency(store.get(i) for i in store.images())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(checks.summary())
    for issue in checks.issues:
        print(f"  {issue.kind:15} {issue.path}: {issue.detail}")
    print(f"{len(tags)} distinct tags" + (":" if tags else ""))
    for tag, count in tags[:50]:
        print(f"  {count:5}  {tag}")
    return 0 if checks.ok else 1


def run(args: argparse.Namespace) -> int:
    if args.report:
        return report(args.dir, args.format, args.csv)
    return caption_folder(args, args.dir, args.format, args.csv)
