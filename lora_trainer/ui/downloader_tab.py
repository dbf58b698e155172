"""The LoRA Downloader tab: paste links, watch the queue, cancel/retry. The engine does the work."""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any

import gradio as gr

from lora_trainer.errors import UserError
from lora_trainer.ui.compat import make, on

if TYPE_CHECKING:
    from lora_trainer.hosts.base import Host

HEADERS = ["id", "name", "state", "progress", "speed", "ETA", "saved to / error"]
DESTINATIONS = ["auto", "lora", "checkpoint", "vae", "embedding"]
POLL_S = 1.0
HELP = ("One download per line: `url`, or `name | url | sha256`; extra URLs on the same line "
        "(space-separated) are mirrors. Civitai and HuggingFace tokens are read from the settings.")
DESTINATION_HELP = "auto = by what the file is (LoRA, checkpoint, VAE, embedding)"


def _size(n: float | None) -> str:
    if not n:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


FINAL_STATES = ("done", "failed", "cancelled")


def queue_rows(items: list[dict[str, Any]]) -> list[list[Any]]:
    """Queue rows from the download manager's items (newest first)."""
    rows = []
    for it in reversed(items):
        done, total = it.get("done_bytes") or 0, it.get("total_bytes")
        pct = f"{100 * done / total:.0f}% of {_size(total)}" if total else _size(done)
        running = it.get("state") == "running"
        eta = it.get("eta_s")
        last = it.get("error") or it.get("path") or ""
        if it.get("existed"):
            last = f"already there: {last}"
        rows.append([it.get("id", ""), it.get("name", ""), it.get("state", ""), pct,
                     f"{_size(it.get('speed_bps'))}/s" if running and it.get("speed_bps") else "",
                     f"{int(eta)} s" if running and isinstance(eta, (int, float)) else "", last])
    return rows


def queue_html(items: list[dict[str, Any]]) -> str:
    """The queue as an HTML table. HTML rather than gr.Dataframe: gradio 4.17-4.44 never re-renders
    a Dataframe after a generator's first yield, so live progress would freeze on Forge."""
    rows = queue_rows(items)
    if not rows:
        return "<p class='ld-empty'>The queue is empty.</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = []
    for row in rows:
        cells = "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
        body.append(f"<tr class='ld-{html.escape(str(row[2]))}'>{cells}</tr>")
    return f"<table class='ld-queue'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def build_downloader_tab(host: Host) -> gr.Blocks:

    with gr.Blocks(analytics_enabled=False) as tab:
        gr.Markdown("### Download LoRAs and models from direct links")
        if host.restricted:
            gr.Markdown(f"**Downloads are disabled here:** {host.restriction_reason()}")
        links = make(gr.Textbox, label="Links", lines=5, placeholder="https://…", info=HELP, elem_id="ld_links")
        with gr.Row():
            dest = make(gr.Dropdown, label="Destination", choices=DESTINATIONS, value="auto", elem_id="ld_dest")
            connections = make(gr.Slider, label="Connections per file", minimum=1, maximum=32, step=1, value=8,
                               elem_id="ld_connections")
            start = make(gr.Button, value="Download", variant="primary", elem_id="ld_start")
        message = make(gr.Markdown, value="", elem_id="ld_message")
        table = make(gr.HTML, value=queue_html([]), elem_id="ld_queue")
        with gr.Row():
            selected = make(gr.Textbox, label="Download id", elem_id="ld_selected")
            cancel = make(gr.Button, value="Cancel", elem_id="ld_cancel")
            retry = make(gr.Button, value="Retry", elem_id="ld_retry")
            refresh = make(gr.Button, value="Refresh", elem_id="ld_refresh")

        def queue():
            from lora_trainer.hosts.downloads import manager

            return manager(host)

        def do_start(text: str, destination: str, conns: float):
            from lora_trainer.hosts.downloads import start_downloads

            body = {"links": text or "", "connections": int(conns)}
            if destination != "auto":
                body["kind"] = destination
            try:
                ids = [row["id"] for row in start_downloads(host, body)]
                mgr = queue()
            except UserError as exc:
                yield f"**Not started:** {exc}", do_refresh()
                return
            while True:
                items = mgr.items()
                mine = [it for it in items if it.get("id") in ids]
                yield f"{len(ids)} download(s) queued…", queue_html(items)
                if all(it.get("state") in FINAL_STATES for it in mine):
                    break
                time.sleep(POLL_S)
            failed = [it for it in mine if it.get("state") != "done"]
            yield (f"**{len(failed)} did not finish** — see the last column." if failed
                   else "All downloads finished."), queue_html(mgr.items())

        def do_refresh():
            try:
                return queue_html(queue().items())
            except UserError:
                return queue_html([])

        def do_cancel(item_id: str):
            try:
                queue().cancel((item_id or "").strip())
            except KeyError:
                return "No download with that id.", do_refresh()
            return f"Cancelled {item_id}.", do_refresh()

        def do_retry(item_id: str):
            try:
                queue().retry((item_id or "").strip())
            except KeyError:
                return "No download with that id.", do_refresh()
            return f"Retrying {item_id}.", do_refresh()

        on(start.click, do_start, inputs=[links, dest, connections], outputs=[message, table])
        on(refresh.click, do_refresh, inputs=[], outputs=[table])
        on(cancel.click, do_cancel, inputs=[selected], outputs=[message, table])
        on(retry.click, do_retry, inputs=[selected], outputs=[message, table])
    return tab
