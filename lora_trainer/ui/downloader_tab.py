"""The LoRA Downloader tab: paste links or a team manifest, watch the queue, act on each row.

Row buttons (Cancel, Retry, Open folder) and card buttons (Update) live inside HTML, not gradio
components: they put "verb:target" into `window.ldAction` and click a hidden gradio button whose
`js` hands that value to Python. The queue is an HTML table rather than a gr.Dataframe because
gradio 4.17-4.44 (Forge: 4.40) never re-renders a Dataframe after a generator's first yield, so
live progress would freeze there.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from lora_trainer.download.options import DownloadOptions
from lora_trainer.errors import UserError
from lora_trainer.ui.compat import make, on

if TYPE_CHECKING:
    from lora_trainer.hosts.base import Host

HEADERS = ["name", "state", "progress", "speed", "ETA", "saved to / error", ""]
DESTINATIONS = ["auto", "lora", "checkpoint", "vae", "embedding"]
POLL_S = 1.0
HELP = ("One download per line: a link, or name | link | sha256; more links on the same line "
        "(space-separated) are mirrors.")
DESTINATION_HELP = "auto = by what the file is (LoRA, checkpoint, VAE, embedding)"
FINAL_STATES = ("done", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
# what the engine says for its command line, said the way this screen works
_WORDING = (
    ("run the same command again to resume", "press Retry to resume"),
    ("raise --max-size to allow it", "raise the size cap to allow it"),
    ("raise --max-size", "raise the size cap"),
    ("allow pickles (--allow-pickle)", "allow pickle files in the settings"),
    ("pass --token, set 'Civitai API token' in the settings, or set CIVITAI_TOKEN",
     "set the Civitai API token in the settings"),
    ("pass --token, set 'HuggingFace token' in the settings, or set HF_TOKEN", "set the HuggingFace token in the settings"),
    ("pass --token, set", "set"),
    ("choose another folder with --to", "choose another destination"),
)
STYLE = """<style>
#ld_hidden_row{display:none !important}
.ld-queue{width:100%;border-collapse:collapse}
.ld-queue td,.ld-queue th{padding:4px 6px;border-bottom:1px solid #8884;text-align:left;vertical-align:middle}
.ld-bar{display:inline-block;width:120px;height:8px;background:#8883;border-radius:4px;overflow:hidden;
 vertical-align:middle;margin-right:6px}
.ld-bar>div{height:100%;background:#4a8cf7}
.ld-failed .ld-bar>div{background:#e05252}.ld-done .ld-bar>div{background:#3bb36b}
.ld-row-btn,.ld-card-btn{cursor:pointer;border:1px solid #8886;border-radius:6px;padding:2px 8px;margin:0 2px;
 background:transparent;color:inherit}
.ld-cards{display:flex;flex-wrap:wrap;gap:12px}
.ld-card{width:220px;border:1px solid #8885;border-radius:8px;padding:8px}
.ld-card img{width:100%;height:160px;object-fit:cover;border-radius:6px;background:#8882}
</style>"""


def wording(message: str) -> str:
    """Engine messages name command-line flags; here the same advice points at this screen."""
    for old, new in _WORDING:
        message = message.replace(old, new)
    return message


def _size(n: float | None) -> str:
    if not n:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _button(verb: str, target: str, label: str, go: str, cls: str = "ld-row-btn") -> str:
    act = html.escape(f"{verb}:{target}", quote=True)
    js = ("window.ldAction=this.dataset.act;"
          f"var r=this.getRootNode();(r.querySelector('#{go}')||document.querySelector('#{go}')).click()")
    return (f"<button class='{cls}' data-act='{act}' data-verb='{verb}' onclick=\"{js}\">"
            f"{html.escape(label)}</button>")


def _progress(it: dict[str, Any]) -> str:
    done, total = it.get("done_bytes") or 0, it.get("total_bytes")
    state = it.get("state")
    pct = 100.0 if state == "done" else (100 * done / total if total else 0.0)
    text = f"{pct:.0f}% of {_size(total)}" if total else _size(done)
    return f"<div class='ld-bar'><div style='width:{pct:.0f}%'></div></div><span>{html.escape(text)}</span>"


def _actions(it: dict[str, Any], can_open: bool) -> str:
    state, item_id = it.get("state"), str(it.get("id", ""))
    out = []
    if state in ACTIVE_STATES:
        out.append(_button("cancel", item_id, "Cancel", "ld_action_go"))
    if state in ("failed", "cancelled"):
        out.append(_button("retry", item_id, "Retry", "ld_action_go"))
    if state == "done" and it.get("path") and can_open:
        out.append(_button("open", item_id, "Open folder", "ld_action_go"))
    return "".join(out)


def queue_html(items: list[dict[str, Any]], can_open: bool = True) -> str:
    """The queue as an HTML table (newest first): a progress bar and action buttons on every row."""
    if not items:
        return "<p class='ld-empty'>The queue is empty.</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = []
    for it in reversed(items):
        running = it.get("state") == "running"
        eta = it.get("eta_s")
        last = wording(str(it.get("error") or "")) or it.get("path") or ""
        if it.get("existed"):
            last = f"already there: {last}"
        cells = [html.escape(str(it.get("name", ""))), html.escape(str(it.get("state", ""))), _progress(it),
                 html.escape(f"{_size(it.get('speed_bps'))}/s" if running and it.get("speed_bps") else ""),
                 html.escape(f"{int(eta)} s" if running and isinstance(eta, (int, float)) else ""),
                 html.escape(last), _actions(it, can_open)]
        state = html.escape(str(it.get("state", "")))
        item_id = html.escape(str(it.get("id", "")), quote=True)
        body.append(f"<tr class='ld-{state}' data-id='{item_id}'>{''.join(f'<td>{c}</td>' for c in cells)}</tr>")
    return f"<table class='ld-queue'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_STATUS_TEXT = {"current": "up to date", "outdated": "update available", "missing": "not installed"}
_STATUS_COLOR = {"current": "#3bb36b", "outdated": "#e0a030", "missing": "#4a8cf7"}


def _preview_src(source: Any, version: Any) -> str:
    """A link the browser can load: the store's own link, or the server file inlined (small images)."""
    if version.preview is None or not version.preview.urls:
        return ""
    src = source.resolve(version.preview.urls[0])
    if src.startswith(("http://", "https://")):
        return src
    p = Path(src)
    if p.is_file() and p.stat().st_size <= 4 << 20:
        kind = "png" if p.suffix.lower() == ".png" else "jpeg"
        return f"data:image/{kind};base64," + base64.b64encode(p.read_bytes()).decode()
    return ""


def cards_html(manifest: Any, source: Any, statuses: dict[str, tuple[str, Any]]) -> str:
    """One card per LoRA of a team manifest: preview, trigger words, version, local status, Update."""
    if not manifest.loras:
        return "<p>This manifest lists no LoRAs.</p>"
    cards = []
    for entry in sorted(manifest.loras, key=lambda e: e.name.lower()):
        state, want = statuses[entry.name]
        img = _preview_src(source, want)
        pic = f"<img src='{html.escape(img, quote=True)}' alt=''>" if img else "<img alt=''>"
        words = ", ".join(want.trigger_words) or "none"
        label = "Install" if state == "missing" else "Update"
        button = "" if state == "current" else _button("update", entry.name, label, "ld_card_go", "ld-card-btn")
        cards.append(
            f"<div class='ld-card' data-name='{html.escape(entry.name, quote=True)}'>{pic}"
            f"<div><b>{html.escape(entry.name)}</b> v{want.version}</div>"
            f"<div class='ld-status-{state}' style='color:{_STATUS_COLOR[state]}'>{_STATUS_TEXT[state]}</div>"
            f"<div>trigger words: <code>{html.escape(words)}</code></div>"
            f"<div>{html.escape(want.sd_version or want.architecture)}</div>{button}</div>")
    return f"<div class='ld-cards'>{''.join(cards)}</div>"


class _QueueView:
    """The host's download queue as this tab shows and drives it."""

    def __init__(self, host: Host):
        from lora_trainer.hosts import downloads

        self.host, self.dl, self.can_open = host, downloads, not host.restricted

    def render(self) -> str:
        try:
            return queue_html(self.dl.items(self.host), self.can_open)
        except UserError:
            return queue_html([])

    def follow(self, note: str):
        """Yield (note, table) until nothing is queued or running (live progress on every row)."""
        while True:
            items = self.dl.items(self.host)
            yield note, queue_html(items, self.can_open)
            if not any(it.get("state") in ACTIVE_STATES for it in items):
                return
            time.sleep(POLL_S)

    def name(self, item_id: str) -> str:
        try:
            return str(self.dl.item(self.host, item_id).get("name") or item_id)
        except KeyError:
            return item_id

    def start(self, text: str, destination: str, conns: float):
        body = {"links": text or "", "connections": int(conns)}
        if destination != "auto":
            body["kind"] = destination
        try:
            ids = [row["id"] for row in self.dl.start_downloads(self.host, body)]
        except UserError as exc:
            yield f"**Not started:** {wording(str(exc))}", self.render()
            return
        yield from self.follow(f"{len(ids)} download(s) queued…")
        failed = [it for it in self.dl.items(self.host) if it.get("id") in ids and it.get("state") != "done"]
        yield (f"**{len(failed)} did not finish** — see the last columns." if failed
               else "All downloads finished."), self.render()

    def act(self, act: str) -> tuple[str, str, str]:
        """A row button. Quick, and run outside the queue (a download's live view must not hold up
        Cancel); a retried row is then followed live by `follow_retry`. (message, table, retried id)"""
        verb, _, item_id = (act or "").partition(":")
        try:
            if verb == "cancel":
                self.dl.cancel(self.host, item_id)
                return f"Cancelled {self.name(item_id)}.", self.render(), ""
            if verb == "open":
                return self.dl.open_folder(self.host, item_id), self.render(), ""
            if verb == "retry":
                self.dl.retry(self.host, item_id)
                return f"Retrying {self.name(item_id)}…", self.render(), item_id
        except KeyError:
            return "That download is no longer in the queue.", self.render(), ""
        except UserError as exc:
            return wording(str(exc)), self.render(), ""
        return "", self.render(), ""

    def follow_retry(self, item_id: str):
        if not item_id:  # not a retry: the action already drew the table; a late redraw could undo a Clear
            yield gr.update(), gr.update()
            return
        yield from self.follow(f"Retrying {self.name(item_id)}…")
        try:
            state = self.dl.item(self.host, item_id).get("state")
        except KeyError:
            state = "removed"
        yield f"Retried {self.name(item_id)}: {state}.", self.render()

    def clear(self) -> tuple[str, str]:
        return f"Cleared {self.dl.clear_finished(self.host)} finished download(s).", self.render()


class _TeamView:
    """A team manifest as cards; Install/Update pull through the host's queue."""

    def __init__(self, queue: _QueueView):
        self.queue, self.host, self.dl = queue, queue.host, queue.dl

    def show(self, src: str) -> tuple[str, str]:
        try:
            m, source, statuses = self.dl.read_team_manifest(self.host, src)
        except UserError as exc:
            return f"**Cannot read the manifest:** {wording(str(exc))}", ""
        todo = sum(s != "current" for s, _ in statuses.values())
        note = (f"{len(m.loras)} LoRA(s), {todo} to install or update." if todo
                else f"{len(m.loras)} LoRA(s), all up to date.")
        return note, cards_html(m, source, statuses)

    def update(self, src: str, names: list[str] | None):
        """Pull in a thread; meanwhile the queue shows each file's progress (and its Cancel)."""
        import threading

        what = ", ".join(names) if names else "every LoRA"
        done: dict[str, Any] = {}

        def work() -> None:
            try:
                done["report"] = self.dl.pull_team(self.host, src, names)
            except UserError as exc:
                done["error"] = exc

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        while worker.is_alive():
            yield f"Updating {what}…", gr.update(), self.queue.render()
            worker.join(POLL_S)
        if "error" in done:
            yield f"**Not updated:** {wording(str(done['error']))}", gr.update(), self.queue.render()
            return
        lines = "\n".join(f"- {html.escape(wording(o.line()))}" for o in done["report"].outcomes)
        yield lines or "Nothing to do.", self.show(src)[1], self.queue.render()

    def card(self, act: str, src: str):
        verb, _, name = (act or "").partition(":")
        if verb != "update" or not name:
            yield "", gr.update(), self.queue.render()
            return
        yield from self.update(src, [name])

    def update_all(self, src: str):
        yield from self.update(src, None)


def build_downloader_tab(host: Host) -> gr.Blocks:
    queue = _QueueView(host)
    team = _TeamView(queue)
    with gr.Blocks(analytics_enabled=False) as tab:
        make(gr.HTML, value=STYLE)
        with gr.Row(elem_id="ld_hidden_row"):  # what the HTML buttons click (see the module docstring)
            action = make(gr.Textbox, value="", elem_id="ld_action", show_label=False)
            action_go = make(gr.Button, value="act", elem_id="ld_action_go")
            card_go = make(gr.Button, value="card", elem_id="ld_card_go")
        gr.Markdown("### Download LoRAs and models from direct links")
        if host.restricted:
            gr.Markdown(f"**Downloads are disabled here:** {host.restriction_reason()}")
        where = ("Tokens and proxy: the section at the bottom of this tab." if host.name == "standalone"
                 else "Tokens and proxy: Settings → LoRA Trainer.")
        links = make(gr.Textbox, label="Links", lines=5, placeholder="https://…", info=f"{HELP} {where}",
                     elem_id="ld_links")
        with gr.Row():
            dest = make(gr.Dropdown, label="Destination", choices=DESTINATIONS, value="auto", elem_id="ld_dest",
                        info=DESTINATION_HELP)
            connections = make(gr.Slider, label="Connections per file", minimum=1, maximum=32, step=1,
                               value=DownloadOptions.connections,
                               elem_id="ld_connections")
            start = make(gr.Button, value="Download", variant="primary", elem_id="ld_start")
        message = make(gr.Markdown, value="", elem_id="ld_message")
        table = make(gr.HTML, value=queue_html([]), elem_id="ld_queue")
        with gr.Row():
            refresh = make(gr.Button, value="Refresh", elem_id="ld_refresh", size="sm")
            clear = make(gr.Button, value="Clear finished", elem_id="ld_clear", size="sm")
        on(start.click, queue.start, inputs=[links, dest, connections], outputs=[message, table])
        on(refresh.click, queue.render, inputs=[], outputs=[table], queue=False)
        on(clear.click, queue.clear, inputs=[], outputs=[message, table], queue=False)
        retried = gr.State("")
        acted = on(action_go.click, queue.act, inputs=[action], outputs=[message, table, retried],
                   js="(x) => [window.ldAction || x]", queue=False)
        acted.then(queue.follow_retry, inputs=[retried], outputs=[message, table])
        _team_section(team, action, card_go, table)
        if host.name == "standalone":
            _settings(host, tab)
    return tab


def _team_section(team: _TeamView, action: Any, card_go: Any, table: Any) -> None:
    with gr.Accordion("Team manifest (shared LoRAs)", open=False):
        with gr.Row():
            manifest = make(gr.Textbox, label="Manifest link or file", elem_id="ld_manifest",
                            placeholder="https://…/team.json",
                            info="What lora-trainer publish wrote; every LoRA in it shows as a card.")
            load = make(gr.Button, value="Show", elem_id="ld_manifest_load")
            update_all = make(gr.Button, value="Update all", elem_id="ld_update_all")
        card_message = make(gr.Markdown, value="", elem_id="ld_card_message")
        cards = make(gr.HTML, value="", elem_id="ld_cards")
    on(card_go.click, team.card, inputs=[action, manifest], outputs=[card_message, cards, table],
       js="(x, m) => [window.ldAction || x, m]")
    on(load.click, team.show, inputs=[manifest], outputs=[card_message, cards], queue=False)
    on(update_all.click, team.update_all, inputs=[manifest], outputs=[card_message, cards, table])


SAVED_TOKEN = "saved — type a new one to replace it, leave empty to keep it"


def masked_proxy(url: str) -> str:
    """The proxy as the page may show it: a password in it becomes ****."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.password:
        return url
    return url.replace(f":{parts.password}@", ":****@", 1)


def _settings(host: Host, tab: gr.Blocks) -> None:
    """Tokens and proxy for the standalone app (inside the WebUI they are on its Settings page).

    A saved token never goes back to the page (the app may be served to other machines): the box stays
    empty with a "saved" placeholder, an empty box keeps the saved token, and a button forgets them."""
    from lora_trainer.hosts import downloads

    def placeholder(key: str) -> str:
        return SAVED_TOKEN if host.setting(key) else ""

    def shown_proxy() -> str:
        return masked_proxy(host.setting("proxy") or "")

    with gr.Accordion("Tokens and proxy", open=False):
        civitai = make(gr.Textbox, label="Civitai API token", type="password", elem_id="ld_civitai_token",
                       value="", placeholder=placeholder("civitai_token"), info="for files that need a Civitai login")
        hf = make(gr.Textbox, label="HuggingFace token", type="password", elem_id="ld_hf_token",
                  value="", placeholder=placeholder("hf_token"), info="for gated or private repositories")
        proxy = make(gr.Textbox, label="Proxy", elem_id="ld_proxy", value=shown_proxy(),
                     placeholder="socks5h://127.0.0.1:1080", info="http://, socks5:// or socks5h://; empty = "
                                                                  "the system's proxy settings")
        with gr.Row():
            save = make(gr.Button, value="Save", elem_id="ld_settings_save")
            forget = make(gr.Button, value="Forget the saved tokens", elem_id="ld_settings_forget")
        saved = make(gr.Markdown, value="", elem_id="ld_settings_saved")

    def store(civitai_token: str, hf_token: str, proxy_url: str) -> str:
        kept = downloads.apply_settings(host, {"civitai_token": civitai_token, "hf_token": hf_token,
                                               "proxy": proxy_url})
        if kept:
            return f"Saved; kept for the next start in {kept} (readable only by you)."
        return ("Saved for this session (set LORA_TRAINER_CIVITAI_TOKEN, LORA_TRAINER_HF_TOKEN or "
                "LORA_TRAINER_PROXY to keep them across restarts).")

    def do_save(civitai_token: str, hf_token: str, proxy_url: str) -> tuple[str, Any, Any]:
        if proxy_url.strip() == shown_proxy():  # the masked password stands for the saved one
            proxy_url = host.setting("proxy") or ""
        message = store(civitai_token.strip() or host.setting("civitai_token") or "",
                        hf_token.strip() or host.setting("hf_token") or "", proxy_url)
        return message, gr.update(value="", placeholder=placeholder("civitai_token")), \
            gr.update(value="", placeholder=placeholder("hf_token"))

    def do_forget(proxy_url: str) -> tuple[str, Any, Any]:
        store("", "", (host.setting("proxy") or "") if proxy_url.strip() == shown_proxy() else proxy_url)
        return "The saved tokens are forgotten.", gr.update(value="", placeholder=""), gr.update(value="", placeholder="")

    on(save.click, do_save, inputs=[civitai, hf, proxy], outputs=[saved, civitai, hf])
    on(forget.click, do_forget, inputs=[proxy], outputs=[saved, civitai, hf])
    # the page may be older than the settings: say on each load whether a token is saved (never the token)
    on(tab.load, lambda: (gr.update(value="", placeholder=placeholder("civitai_token")),
                          gr.update(value="", placeholder=placeholder("hf_token")), shown_proxy()),
       inputs=[], outputs=[civitai, hf, proxy], queue=False)
