"""One place for the differences between gradio 3.41 (A1111), 4.40 (Forge) and current gradio."""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

import gradio as gr

GRADIO_MAJOR = int(gr.__version__.split(".")[0])


@cache
def _accepted(cls: type) -> frozenset[str] | None:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) and cls is not gr.Blocks:
        return None
    return frozenset(params)


def make(cls: type, **kwargs: Any) -> Any:
    """Build a component, dropping keyword arguments this gradio version does not know
    (e.g. Gallery `columns`/`height`, Textbox `show_copy_button`, Button `size`)."""
    if cls is gr.File and GRADIO_MAJOR < 4 and kwargs.get("type") == "filepath":
        kwargs["type"] = "file"  # gradio 3.41 has no "filepath"; its "file" object has .name
    accepted = _accepted(cls)
    if accepted is not None:
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return cls(**kwargs)


def update(**kwargs: Any) -> Any:
    """`gr.update` (exists in every supported version; `gr.X.update` does not)."""
    return gr.update(**kwargs)


def on(event: Any, fn: Any, *, inputs: Any = None, outputs: Any = None, js: str | None = None,
       **kwargs: Any) -> Any:
    """Attach a listener; `js` is passed as `_js=` on gradio 3 and `js=` later."""
    params = inspect.signature(event).parameters
    if js is not None:
        kwargs["_js" if "_js" in params else "js"] = js
    if "show_progress" in kwargs and GRADIO_MAJOR < 4:
        kwargs["show_progress"] = kwargs["show_progress"] != "hidden"
    kwargs = {k: v for k, v in kwargs.items() if k in params}
    if GRADIO_MAJOR == 4 and inspect.isgeneratorfunction(fn) and outputs:
        return _generator_with_table_refresh(event, fn, inputs, list(outputs), kwargs)
    return event(fn, inputs=inputs, outputs=outputs, **kwargs)


def _generator_with_table_refresh(event: Any, fn: Any, inputs: Any, outputs: list[Any],
                                  kwargs: dict[str, Any]) -> Any:
    """gradio 4.17-4.44 (Forge: 4.40) does not re-render a gr.Dataframe from a generator's later yields
    (they arrive as diffs the table ignores; gradio issues 8160/8173). Keep the last yield in a
    per-session State; when the generator ends, blank each table that got a value and send that value
    again as a plain return (sending the same value alone does not re-render either)."""
    tables = [i for i, o in enumerate(outputs) if isinstance(o, gr.Dataframe)]
    if not tables:
        return event(fn, inputs=inputs, outputs=outputs, **kwargs)
    last = gr.State(None)
    single = len(outputs) == 1

    def run(*args: Any) -> Any:
        for out in fn(*args):
            values = [out] if single else list(out)
            yield (*values, [values[i] for i in tables])

    def unchanged(value: Any) -> bool:
        return isinstance(value, dict) and value.get("__type__") == "update" and "value" not in value

    def pack(values: list[Any]) -> Any:
        return values[0] if len(values) == 1 else tuple(values)

    def blank(kept: list[Any] | None) -> Any:
        return pack([update() if unchanged(v) else update(value=None) for v in kept or [update()] * len(tables)])

    def resend(kept: list[Any] | None) -> Any:
        return pack(list(kept or [update()] * len(tables)))

    targets = [outputs[i] for i in tables]
    dep = event(run, inputs=inputs, outputs=[*outputs, last], **kwargs)
    dep.then(blank, inputs=[last], outputs=targets).then(resend, inputs=[last], outputs=targets)
    return dep


def enable_queue(app: Any, workers: int = 16) -> Any:
    """Queue with room for several browsers at once (a page following a run must not make another
    page's Train or Stop wait): gradio 3 counts workers per app, 4+ limits each event."""
    if GRADIO_MAJOR < 4:
        return app.queue(concurrency_count=workers)
    return app.queue(default_concurrency_limit=workers)


def blocks(**kwargs: Any) -> Any:
    """gr.Blocks without the arguments newer gradio moved to launch() (css, theme)."""
    if GRADIO_MAJOR >= 6:
        kwargs.pop("css", None)
        kwargs.pop("theme", None)
    return gr.Blocks(**kwargs)


def dataframe_value(rows: list[list[Any]], headers: list[str]) -> dict[str, Any] | Any:
    """A table value every version accepts."""
    return {"data": rows or [[""] * len(headers)], "headers": headers}
