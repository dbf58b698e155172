"""The dataset section of the Trainer tab (and the standalone app): open a folder or upload images,
check them, see tag counts, bulk-edit captions (with undo), auto-caption with progress, and edit
captions one by one under a preview grid.

Only glue: every action calls the engine (`lora_trainer.data.tools`, `lora_trainer.caption`).
The handlers are plain functions (tested without a browser); `build_dataset_section` wires them
with the `compat` helpers so the same code runs on gradio 3.41, 4.40 and current gradio.

Uploading works in every mode (the local app too); typing a server folder only where server paths
are allowed. A captioner this Python cannot run (transformers too old inside the WebUI, no
onnxruntime) stays in the list, but choosing it greys out the Caption button and says why.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lora_trainer.errors import UserError

PREVIEW_LIMIT = 120      # thumbnails shown in the grid (a big folder stays responsive)
THUMB_SIDE = 256
POLL_S = 0.5
TAG_HEADERS = ["tag", "images"]
UPLOAD_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".txt", ".caption", ".csv")
CAPTIONER_LABELS = {"wd14": "wd14 (tags)", "blip": "blip (one sentence)", "florence2": "florence2 (prose)",
                    "vlm": "vlm (prose, any image-text-to-text model)", "host": "host (WebUI interrogators)"}
PROSE = ("florence2", "vlm")


# ----------------------------------------------------------------------------- handlers (no gradio)

def resolve_folder(folder: str, allow_server_paths: bool, current: str = "") -> str:
    """The dataset folder an action works on: the typed path (only when server paths are allowed),
    else the folder made from uploads."""
    if allow_server_paths and folder and folder.strip():
        path = Path(folder.strip()).expanduser()
        if not path.is_dir():
            raise UserError(f"dataset folder '{path}' does not exist on the server")
        return str(path.resolve())
    if current and Path(current).is_dir():
        return current
    raise UserError("type a dataset folder and press Open" if allow_server_paths else "upload images first")


def save_uploads(files: list[Any] | None, upload_dir: str | None = None) -> str:
    """Copy uploaded images (and captions / metadata.csv) into a fresh folder; return it."""
    from lora_trainer.atomic import atomic_copy

    if not files:
        raise UserError("no files uploaded")
    base = upload_dir or tempfile.gettempdir()
    os.makedirs(base, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="lora_dataset_", dir=base)
    for item in files:
        src = item if isinstance(item, str) else getattr(item, "name", None) or getattr(item, "path", "")
        name = os.path.basename(src)
        if name.lower().endswith(UPLOAD_EXTS) and os.path.isfile(src):
            atomic_copy(src, os.path.join(folder, name))
    return folder


def _store(folder: str, fmt: str = "auto") -> Any:
    from lora_trainer.data.tools import CaptionStore

    return CaptionStore(folder, fmt=fmt)


def tag_rows(folder: str) -> list[list[Any]]:
    from lora_trainer.data.tools import tag_frequency

    store = _store(folder)
    return [[tag, n] for tag, n in tag_frequency(store.get(i) for i in store.images())]


def gallery_items(folder: str) -> list[tuple[Any, str]]:
    """(thumbnail, caption) for the first PREVIEW_LIMIT images; unreadable images get a grey tile."""
    from PIL import Image

    store = _store(folder)
    items = []
    for path in store.images()[:PREVIEW_LIMIT]:
        try:
            with Image.open(path) as image:
                image.thumbnail((THUMB_SIDE, THUMB_SIDE))
                thumb = image.convert("RGB")
        except Exception:  # noqa: BLE001 - the check report says why
            thumb = Image.new("RGB", (64, 64), (128, 128, 128))
        items.append((thumb, store.get(path) or f"({path.name}: no caption)"))
    return items


def summary(folder: str) -> str:
    store = _store(folder)
    images = store.images()
    captioned = sum(1 for i in images if store.get(i))
    shown = f" (preview shows the first {PREVIEW_LIMIT})" if len(images) > PREVIEW_LIMIT else ""
    return (f"`{folder}`: **{len(images)} images**, {captioned} captioned, captions in "
            f"{store.fmt if store.fmt != 'both' else '.txt files and metadata.csv'}{shown}")


def check_report(folder: str, min_side: float = 256, max_aspect: float = 4.0) -> str:
    from lora_trainer.data.tools import check_images

    return check_images(folder, min_side=int(min_side), max_aspect=float(max_aspect)).to_markdown()


def bulk_edit(folder: str, action: str, first: str = "", second: str = "") -> str:
    """action: "trigger" (first = trigger word), "replace" (first → second), "remove" (first), "undo"."""
    from lora_trainer.data.tools import add_trigger, remove_tag, replace_tag, undo_last

    if action == "undo":
        return undo_last(folder).message
    store = _store(folder)
    if action == "trigger":
        return add_trigger(store, first).message
    if action == "replace":
        return replace_tag(store, first, second).message
    if action == "remove":
        return remove_tag(store, first).message
    raise UserError(f"unknown bulk edit '{action}'")


def image_at(folder: str, index: int) -> Path:
    images = _store(folder).images()
    if not 0 <= index < len(images):
        raise UserError("select an image in the preview first")
    return images[index]


def read_one(folder: str, index: int) -> tuple[str, str]:
    """(image name, caption) of the index-th image."""
    path = image_at(folder, index)
    return path.relative_to(folder).as_posix(), _store(folder).get(path) or ""


def write_one(folder: str, index: int, caption: str) -> str:
    """Save one caption (atomic), in whatever format the folder uses."""
    path = image_at(folder, index)
    store = _store(folder)
    store.set(path, caption)
    store.flush()
    return f"saved caption of {path.relative_to(folder).as_posix()}"


def in_webui() -> bool:
    """True inside A1111/Forge (their `modules.shared` is loaded before any extension UI)."""
    return "modules.shared" in sys.modules


def captioner_state(name: str, webui: bool) -> tuple[str, bool]:
    """(note under the captioner list, whether Caption can be pressed) for the chosen captioner."""
    from lora_trainer.caption.support import unavailable_reason

    reason = unavailable_reason(name, in_webui=webui)
    if reason:
        return f"**Not available here:** {reason}.", False
    if name == "vlm":
        return "Needs a model folder (or a hub id already in the Hugging Face cache); nothing is downloaded.", True
    if name == "florence2":
        return ("Empty model = florence-community/Florence-2-base from the Hugging Face cache; "
                "nothing is downloaded."), True
    return "", True


def caption_options(captioner: str, model: str, host_model: str, batch_size: float, device: str,
                    prompt: str, max_length: float, num_beams: float, general_threshold: float,
                    character_threshold: float, include_ratings: bool, exclude_tags: str,
                    allow_server_paths: bool, *, detail: str = "detailed", precision: str = "auto") -> dict[str, Any]:
    """UI values → `make_captioner` keyword arguments. Without server-path access the model field
    takes hub ids only (from the cache, or downloaded). Max tokens / beams 0 = the captioner's default."""
    from lora_trainer.caption.models import looks_like_hub_id

    model = (model or "").strip() or None
    if model and not allow_server_paths and not looks_like_hub_id(model):
        raise UserError("model: only hub ids (owner/name) are allowed here, not server paths")
    common: dict[str, Any] = {"batch_size": int(batch_size or 1)}
    if captioner == "host":
        return {**common, "model": host_model}
    common.update(model=model, device=device)
    max_tokens, beams = int(max_length or 0), int(num_beams or 0)
    if captioner == "blip":
        max_tokens = max_tokens or 40
        return {**common, "prompt": prompt or "", "max_length": max_tokens, "num_beams": beams or 3,
                "min_length": min(5, max_tokens)}
    if captioner in PROSE:
        return {**common, "prompt": prompt or "", "detail": detail, "precision": precision,
                "max_length": max_tokens or None, "num_beams": beams or None}
    return {**common, "general_threshold": float(general_threshold),
            "character_threshold": float(character_threshold), "include_ratings": bool(include_ratings),
            "exclude_tags": exclude_tags or ""}


def run_captioning(folder: str, captioner_name: str, options: dict[str, Any], mode: str, fmt: str,
                   trigger: str) -> Iterator[str]:
    """Start a caption job and yield a status line until it ends (the UI streams these)."""
    from lora_trainer.caption import make_captioner
    from lora_trainer.caption.run import caption_dataset
    from lora_trainer.jobs import Job, registry

    captioner = make_captioner(captioner_name, **options)  # missing model → UserError now, not in the job

    def target(emit: Any, stop: Any) -> Any:
        return caption_dataset(folder, captioner, mode=mode, fmt=fmt, trigger=trigger, emit=emit, stop=stop)

    job = registry.add(Job("caption", target, title=f"caption {folder}")).start()
    cursor, line = 0, "starting…"
    while True:
        events, cursor = job.events_since(cursor)
        for event in events:
            data = event.data
            if event.type == "progress":
                eta = f", about {data['eta_s']:.0f} s left" if data.get("eta_s") else ""
                line = f"captioning: {data['step']}/{data['total_steps']} images ({data['it_per_s']:.2f} img/s{eta})"
            elif event.type in ("status", "done", "stopped", "error"):
                line = data.get("message", line)
        alive = job.alive
        yield ("**Error:** " if job.state == "failed" else "") + line
        if not alive:
            return
        time.sleep(POLL_S)


def stop_captioning() -> str:
    from lora_trainer.jobs import registry

    running = [j for j in registry.list("caption") if j.alive]
    for job in running:
        job.stop("stopped from the UI")
    return "stopping…" if running else "nothing is being captioned"


def _error(exc: Exception) -> str:
    return f"**{exc}**" if isinstance(exc, UserError) else f"**Error:** {type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------- gradio wiring

def build_dataset_section(allow_server_paths: bool, *, upload_dir: str | None = None,
                          webui: bool | None = None) -> dict[str, Any]:
    """Build the section inside the current gradio Blocks context; returns its components by name
    (`dataset_dir` is a State with the folder in use, for wiring to the training form).
    `webui`: running inside A1111/Forge (None = detect)."""
    import gradio as gr

    from lora_trainer.caption import CAPTIONERS
    from lora_trainer.caption.blip import BLIP_FILES
    from lora_trainer.caption.support import DETAILS, PRECISIONS, availability
    from lora_trainer.caption.wd14 import WD14_FILES
    from lora_trainer.data.tools.bulk import can_undo
    from lora_trainer.ui.compat import GRADIO_MAJOR, dataframe_value, make, on, update

    webui = in_webui() if webui is None else webui
    reasons = availability(CAPTIONERS, in_webui=webui)
    usable = [n for n in CAPTIONERS if not reasons[n]]
    first = "wd14" if "wd14" in usable else (usable[0] if usable else "wd14")
    note, can_caption = captioner_state(first, webui)
    names = [(CAPTIONER_LABELS[n] + ("" if n in usable else " — not available here"), n) for n in CAPTIONERS]
    c: dict[str, Any] = {}
    with make(gr.Column):
        c["dataset_dir"] = gr.State("")
        with make(gr.Row):
            c["folder"] = make(gr.Textbox, label="Dataset folder (on the server)", visible=allow_server_paths,
                               placeholder="/path/to/dataset (images or N_name/ folders)", scale=4,
                               elem_id="lt_ds_folder")
            c["open"] = make(gr.Button, value="Open", elem_id="lt_ds_open", scale=1)
        c["upload"] = make(gr.File, label="Upload images (and captions)" + (" — or open a folder above"
                                                                           if allow_server_paths else ""),
                           file_count="multiple",
                           type="filepath" if GRADIO_MAJOR >= 4 else "file",  # 3.41 has no "filepath"
                           elem_id="lt_ds_upload")
        c["summary"] = make(gr.Markdown, value="No dataset opened.", elem_id="lt_ds_summary")
        with make(gr.Accordion, label="Check images", open=False):
            with make(gr.Row):
                c["min_side"] = make(gr.Number, label="Smallest side (px)", value=256, precision=0)
                c["max_aspect"] = make(gr.Number, label="Max aspect ratio", value=4.0)
                c["check"] = make(gr.Button, value="Check images", elem_id="lt_ds_check")
            c["report"] = make(gr.Markdown, value="", elem_id="lt_ds_report")
        with make(gr.Accordion, label="Tags and bulk edits", open=False):
            c["tags"] = make(gr.Dataframe, headers=TAG_HEADERS, interactive=False, elem_id="lt_ds_tags")
            with make(gr.Row):
                c["trigger_word"] = make(gr.Textbox, label="Trigger word", placeholder="ohwx")
                c["add_trigger"] = make(gr.Button, value="Put first in every caption", elem_id="lt_ds_add_trigger")
            with make(gr.Row):
                c["old_tag"] = make(gr.Textbox, label="Tag")
                c["new_tag"] = make(gr.Textbox, label="Replace with (empty = remove)")
                c["replace"] = make(gr.Button, value="Replace everywhere", elem_id="lt_ds_replace")
                c["remove"] = make(gr.Button, value="Remove everywhere", elem_id="lt_ds_remove")
            with make(gr.Row):
                c["undo"] = make(gr.Button, value="Undo last bulk edit", elem_id="lt_ds_undo")
                c["edit_status"] = make(gr.Markdown, value="", elem_id="lt_ds_edit_status")
        with make(gr.Accordion, label="Auto-caption", open=False):
            with make(gr.Row):
                # (label, value) pairs from gradio 4; 3.41 shows the bare names (the note says the rest)
                c["captioner"] = make(gr.Dropdown, label="Captioner", value=first, elem_id="lt_ds_captioner",
                                      choices=names if GRADIO_MAJOR >= 4 else list(CAPTIONERS))
                c["model"] = make(gr.Textbox, label="Model folder or hub id (empty = default)",
                                  placeholder=f"{WD14_FILES.default_id} / {BLIP_FILES.default_id}",
                                  elem_id="lt_ds_model")
                c["host_model"] = make(gr.Dropdown, label="WebUI interrogator", choices=["deepbooru", "blip"],
                                       value="deepbooru")
            c["captioner_note"] = make(gr.Markdown, value=note, elem_id="lt_ds_captioner_note")
            with make(gr.Row):
                c["mode"] = make(gr.Radio, label="Existing captions", value="skip-existing",
                                 choices=["skip-existing", "append", "overwrite"])
                c["format"] = make(gr.Radio, label="Write", choices=["txt", "csv", "both"], value="txt")
                c["caption_trigger"] = make(gr.Textbox, label="Trigger word (first in new captions)",
                                            elem_id="lt_ds_caption_trigger")
            with make(gr.Row):
                c["batch_size"] = make(gr.Number, label="Batch size", value=4, precision=0, elem_id="lt_ds_batch")
                c["device"] = make(gr.Dropdown, label="Device", choices=["auto", "cpu", "cuda"], value="auto")
                c["detail"] = make(gr.Dropdown, label="Florence-2 / VLM: detail", choices=list(DETAILS),
                                   value="detailed", elem_id="lt_ds_detail")
                c["precision"] = make(gr.Dropdown, label="Florence-2 / VLM: precision (auto = bf16/fp16 on GPU)",
                                      choices=list(PRECISIONS), value="auto")
            with make(gr.Row):
                c["general_threshold"] = make(gr.Slider, label="WD14 general threshold", minimum=0, maximum=1,
                                              value=0.35, step=0.01)
                c["character_threshold"] = make(gr.Slider, label="WD14 character threshold", minimum=0,
                                                maximum=1, value=0.85, step=0.01)
            with make(gr.Row):
                c["include_ratings"] = make(gr.Checkbox, label="WD14: add the rating tag", value=False,
                                            info="the most likely of general / sensitive / questionable / explicit",
                                            elem_id="lt_ds_include_ratings")
                c["exclude_tags"] = make(gr.Textbox, label="WD14 exclude tags (comma-separated)")
                c["prompt"] = make(gr.Textbox, label="Prompt (BLIP: caption prefix; VLM: instruction)",
                                   placeholder="a photo of / Describe this image in detail.")
                c["max_length"] = make(gr.Number, label="Max new tokens (0 = default)", value=0, precision=0,
                                       elem_id="lt_ds_max_tokens")
                c["num_beams"] = make(gr.Number, label="Beams (0 = default, 1 = greedy)", value=0, precision=0)
            with make(gr.Row):
                c["caption"] = make(gr.Button, value="Caption images", variant="primary", elem_id="lt_ds_caption",
                                    interactive=can_caption)
                c["caption_stop"] = make(gr.Button, value="Stop", elem_id="lt_ds_caption_stop")
            c["caption_status"] = make(gr.Markdown, value="", elem_id="lt_ds_caption_status")
        c["gallery"] = make(gr.Gallery, label="Preview (click an image to edit its caption)", columns=6,
                            height=420, allow_preview=False, elem_id="lt_ds_gallery")
        c["selected"] = gr.State(-1)
        with make(gr.Row):
            c["selected_name"] = make(gr.Textbox, label="Image", interactive=False, scale=1)
            c["caption_edit"] = make(gr.Textbox, label="Caption", lines=2, scale=4, elem_id="lt_ds_caption_edit")
            c["save_caption"] = make(gr.Button, value="Save caption", elem_id="lt_ds_save", scale=1)

    def views(folder: str) -> tuple[Any, Any, Any]:
        return summary(folder), gallery_items(folder), dataframe_value(tag_rows(folder), TAG_HEADERS)

    def do_open(text: str, files: Any, current: str):
        try:
            typed = allow_server_paths and bool((text or "").strip())
            folder = resolve_folder(text, allow_server_paths, current) if (typed or not files) else \
                save_uploads(files, upload_dir)
            note = can_undo(folder)
            return (folder, *views(folder), f"undo available: {note}" if note else "")
        except UserError as exc:
            return current, _error(exc), update(), update(), ""

    def do_check(current: str, min_side: float, max_aspect: float) -> str:
        try:
            return check_report(resolve_folder("", False, current), min_side or 256, max_aspect or 4.0)
        except UserError as exc:
            return _error(exc)

    def bulk(action: str):
        def handler(current: str, first: str = "", second: str = ""):
            try:
                message = bulk_edit(resolve_folder("", False, current), action, first, second)
                return (message, *views(current))
            except UserError as exc:
                return _error(exc), update(), update(), update()
        return handler

    def do_upload(files: Any, current: str):
        return do_open("", files, current)

    def do_captioner(name: str):
        text, ok = captioner_state(name, webui)
        return text, update(interactive=ok)

    def do_caption(current: str, captioner: str, model: str, host_model: str, batch: float, device: str,
                   prompt: str, max_len: float, beams: float, gen: float, char: float, ratings: bool,
                   exclude: str, mode: str, fmt: str, trigger: str, detail: str, precision: str):
        try:
            folder = resolve_folder("", False, current)
            reason = captioner_state(captioner, webui)
            if not reason[1]:
                raise UserError(reason[0].replace("**", ""))
            options = caption_options(captioner, model, host_model, batch, device, prompt, max_len, beams,
                                      gen, char, ratings, exclude, allow_server_paths, detail=detail,
                                      precision=precision)
            for line in run_captioning(folder, captioner, options, mode, fmt, trigger):
                yield line, update(), update(), update()
            yield (line, *views(folder))
        except UserError as exc:
            yield _error(exc), update(), update(), update()

    def do_select(current, evt):
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        try:
            name, text = read_one(current, index)
            return index, name, text
        except UserError as exc:
            return -1, "", str(exc)

    # a real (not string) annotation: gradio finds the SelectData argument by it in every version
    do_select.__annotations__ = {"evt": gr.SelectData}

    def do_save(current: str, index: int, text: str):
        try:
            message = write_one(current, int(index), text)
            return message, *views(current)
        except UserError as exc:
            return _error(exc), update(), update(), update()

    folder_views = [c["summary"], c["gallery"], c["tags"]]
    on(c["open"].click, do_open, inputs=[c["folder"], c["upload"], c["dataset_dir"]],
       outputs=[c["dataset_dir"], *folder_views, c["edit_status"]])
    on(c["upload"].upload, do_upload, inputs=[c["upload"], c["dataset_dir"]],
       outputs=[c["dataset_dir"], *folder_views, c["edit_status"]])
    on(c["captioner"].change, do_captioner, inputs=[c["captioner"]], outputs=[c["captioner_note"], c["caption"]])
    on(c["check"].click, do_check, inputs=[c["dataset_dir"], c["min_side"], c["max_aspect"]], outputs=[c["report"]])
    edit_out = [c["edit_status"], *folder_views]
    on(c["add_trigger"].click, bulk("trigger"), inputs=[c["dataset_dir"], c["trigger_word"]], outputs=edit_out)
    on(c["replace"].click, bulk("replace"), inputs=[c["dataset_dir"], c["old_tag"], c["new_tag"]], outputs=edit_out)
    on(c["remove"].click, bulk("remove"), inputs=[c["dataset_dir"], c["old_tag"]], outputs=edit_out)
    on(c["undo"].click, bulk("undo"), inputs=[c["dataset_dir"]], outputs=edit_out)
    caption_inputs = [c[k] for k in ("dataset_dir", "captioner", "model", "host_model", "batch_size", "device",
                                     "prompt", "max_length", "num_beams", "general_threshold",
                                     "character_threshold", "include_ratings", "exclude_tags", "mode", "format",
                                     "caption_trigger", "detail", "precision")]
    on(c["caption"].click, do_caption, inputs=caption_inputs, outputs=[c["caption_status"], *folder_views])
    on(c["caption_stop"].click, stop_captioning, inputs=[], outputs=[c["caption_status"]])
    on(c["gallery"].select, do_select, inputs=[c["dataset_dir"]],
       outputs=[c["selected"], c["selected_name"], c["caption_edit"]])
    on(c["save_caption"].click, do_save, inputs=[c["dataset_dir"], c["selected"], c["caption_edit"]],
       outputs=[c["edit_status"], *folder_views])
    return c
