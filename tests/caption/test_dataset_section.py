"""The dataset UI section: built inside a real gradio Blocks, its handlers driven on a real folder."""

from __future__ import annotations

import pytest

from lora_trainer.caption import support
from lora_trainer.errors import UserError
from lora_trainer.ui import dataset_section as ds

from .conftest import noise, solid


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "set"
    (root / "3_red").mkdir(parents=True)
    solid((255, 0, 0)).save(root / "3_red" / "a.png")
    noise(1).save(root / "3_red" / "b.png")
    (root / "3_red" / "b.txt").write_text("cat, sitting")
    return root


def test_section_builds_in_blocks_and_returns_components():
    gr = pytest.importorskip("gradio")
    for allow in (True, False):
        with gr.Blocks():
            comps = ds.build_dataset_section(allow_server_paths=allow)
        for key in ("folder", "upload", "dataset_dir", "check", "report", "tags", "add_trigger", "replace",
                    "remove", "undo", "caption", "caption_status", "gallery", "caption_edit", "save_caption"):
            assert key in comps
        assert comps["folder"].visible is allow and comps["upload"].visible is not False  # upload everywhere


def test_handlers_open_check_edit_undo(folder):
    root = str(folder)
    assert ds.resolve_folder(root, True) == str(folder.resolve())
    with pytest.raises(UserError, match="upload images first"):
        ds.resolve_folder(root, False)  # server paths refused when not allowed
    assert "2 images" in ds.summary(root) and "1 captioned" in ds.summary(root)
    assert "2 too small" in ds.check_report(root, 256, 4.0)
    assert ds.tag_rows(root) == [["cat", 1], ["sitting", 1]]
    items = ds.gallery_items(root)
    assert [text for _, text in items] == ["(a.png: no caption)", "cat, sitting"]
    assert max(items[0][0].size) <= ds.THUMB_SIDE

    assert "1 of 2 captions changed" in ds.bulk_edit(root, "trigger", "ohwx")
    assert ds.read_one(root, 1) == ("3_red/b.png", "ohwx, cat, sitting")
    ds.bulk_edit(root, "replace", "cat", "dog")
    assert ds.read_one(root, 1)[1] == "ohwx, dog, sitting"
    assert ds.bulk_edit(root, "undo").startswith("undo replace")
    assert ds.read_one(root, 1)[1] == "ohwx, cat, sitting"
    assert ds.write_one(root, 0, "red square") == "saved caption of 3_red/a.png"
    assert (folder / "3_red" / "a.txt").read_text() == "red square"
    with pytest.raises(UserError):
        ds.read_one(root, 7)


def test_uploads_and_captioning_with_progress(tmp_path, folder, wd14_dir):
    files = [str(folder / "3_red" / "a.png"), str(folder / "3_red" / "b.png"), str(folder / "3_red" / "b.txt")]
    uploaded = ds.save_uploads(files, str(tmp_path / "uploads"))
    assert sorted(p.name for p in (tmp_path / "uploads").glob("*/*")) == ["a.png", "b.png", "b.txt"]
    assert ds.resolve_folder("", False, uploaded) == uploaded
    options = ds.caption_options("wd14", str(wd14_dir), "deepbooru", 2, "cpu", "", 40, 3, 0.35, 0.85, False,
                                 "", allow_server_paths=True)
    lines = list(ds.run_captioning(uploaded, "wd14", options, "skip-existing", "txt", "ohwx"))
    assert "1 captioned" in lines[-1]
    assert ds.read_one(uploaded, 0)[1] == "ohwx, red theme, 1girl, long hair, ^_^"
    with pytest.raises(UserError, match="only hub ids"):
        ds.caption_options("wd14", str(wd14_dir), "", 1, "cpu", "", 1, 1, 0.3, 0.8, False, "", False)
    with pytest.raises(UserError, match="missing|no such folder"):
        next(ds.run_captioning(uploaded, "wd14", {"model": str(tmp_path)}, "overwrite", "txt", ""))


def _caller(demo, url: str, major: int):
    """call(fn_name, *inputs) over HTTP: gradio's client on 4+, the /run/predict route on 3.x
    (where events have no api names); State inputs are kept by the server per session."""
    if major >= 4:
        from gradio_client import Client

        client = Client(url, verbose=False)
        return lambda name, *data: client.predict(*data, api_name=f"/{name}")
    import json
    import urllib.request

    index: dict[str, int] = {}
    for i, dependency in enumerate(demo.fns):
        index.setdefault(dependency.fn.__name__, i)  # "handler": the first bulk button (add trigger)

    def call(name, *data):
        body = json.dumps({"fn_index": index[name], "data": list(data), "session_hash": "t1"}).encode()
        request = urllib.request.Request(url + "run/predict", body, {"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(request, timeout=60).read())["data"]
    return call


def test_served_section_answers_over_http(folder):
    """The section launched on 127.0.0.1 and driven over HTTP: gradio's own pre/post-processing of
    the gallery, table and session state runs for real (gradio 6 here, 3.41 in the A1111 env)."""
    gr = pytest.importorskip("gradio")
    major = int(gr.__version__.split(".")[0])
    with gr.Blocks() as demo:
        ds.build_dataset_section(allow_server_paths=True)
    demo.queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        call = _caller(demo, url, major)
        if major >= 4:
            summary, gallery, tags, _ = call("do_open", str(folder), None)
            captions = [g["caption"] for g in gallery]
        else:
            _, summary, gallery, tags, _ = call("do_open", str(folder), None, "")
            captions = [g[1] for g in gallery]
        assert "2 images" in summary and captions == ["(a.png: no caption)", "cat, sitting"]
        assert tags["data"] == [["cat", 1], ["sitting", 1]]
        check = call("do_check", 256, 4.0) if major >= 4 else call("do_check", "", 256, 4.0)[0]
        assert "too small" in check
        message = call("handler", "ohwx")[0] if major >= 4 else call("handler", "", "ohwx")[0]
        assert "1 of 2 captions changed" in message  # the add-trigger button
        assert (folder / "3_red" / "b.txt").read_text() == "ohwx, cat, sitting"
        # the installed transformers decides: 4.30.2 (A1111 pins) greys florence2 out, 5.x does not
        reason = support.unavailable_reason("florence2")
        answer = call("do_captioner", "florence2")
        note = answer if isinstance(answer, str) else answer[0]  # gradio 4.40's client drops the button
        assert ("Not available here" in note) is bool(reason) and (not reason or reason in note)
        if major < 4:  # 3.41 sends a button's interactive=False as mode "static"
            assert (answer[1].get("mode") != "static") is (reason is None)
    finally:
        demo.close()


def test_caption_options_for_prose_captioners_use_defaults_for_zero():
    options = ds.caption_options("florence2", "", "deepbooru", 2, "cpu", "", 0, 0, 0.35, 0.85, False, "",
                                 allow_server_paths=True, detail="short", precision="bf16")
    assert options == {"batch_size": 2, "model": None, "device": "cpu", "prompt": "", "detail": "short",
                       "precision": "bf16", "max_length": None, "num_beams": None}
    blip = ds.caption_options("blip", "", "", 1, "cpu", "", 0, 0, 0.35, 0.85, False, "", allow_server_paths=True)
    assert (blip["max_length"], blip["num_beams"], blip["min_length"]) == (40, 3, 5)
    with pytest.raises(UserError, match="only hub ids"):
        ds.caption_options("vlm", "/srv/models/x", "", 1, "cpu", "", 0, 0, 0.3, 0.8, False, "", False)
    assert ds.captioner_state("host", webui=False)[1] is False and ds.captioner_state("host", webui=True)[1]
