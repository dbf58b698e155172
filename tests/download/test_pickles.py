"""Any file downloads: a pickle is decided by its bytes (never by its name) and, unless allowed,
kept outside the WebUI's model folders under a name the WebUI does not load."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

from dlhelpers import files_under, lora_bytes
from dlserver import Resource

from lora_trainer.cli import main as cli_main
from lora_trainer.download import DownloadRequest, download

PICKLE = b"\x80\x02}q\x00." + os.urandom(1000)  # protocol-2 pickle magic, as torch.save wrote before 1.6


def torch_zip() -> bytes:
    """The layout torch.save writes since 1.6: a zip whose archive/data.pkl is the pickle."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", PICKLE)
        z.writestr("archive/data/0", os.urandom(4096))
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def logs(events) -> list[str]:
    return [e.data["message"] for e in events if e.type == "log"]


def test_bin_that_is_not_a_pickle_downloads_like_any_file(srv, opts):
    data = os.urandom(50_000)  # e.g. a tokenizer blob or a GGUF shard: no pickle magic
    srv.routes["/model.bin"] = Resource(data=data)
    res = download(DownloadRequest([srv.url("/model.bin")]), opts)
    f = res.files[0]
    assert not f.pickle and f.kind == "other" and Path(f.path) == opts.root / "model.bin"
    assert Path(f.path).read_bytes() == data


def test_ckpt_name_with_safetensors_bytes_is_classified_by_content(srv, opts):
    srv.routes["/renamed.ckpt"] = Resource(data=lora_bytes(20_000))
    res = download(DownloadRequest([srv.url("/renamed.ckpt")]), opts)
    assert not res.files[0].pickle and files_under(opts.root) == ["renamed.ckpt"]


def test_pickle_kept_outside_model_folders_unless_allowed(srv, opts):
    srv.routes["/m.ckpt"] = Resource(data=PICKLE)
    events = []
    res = download(DownloadRequest([srv.url("/m.ckpt")]), opts, events.append)
    f = res.files[0]
    assert f.pickle and Path(f.path) == opts.root / "m.ckpt.pickle"
    assert files_under(opts.root) == ["m.ckpt.pickle"]  # nothing in Stable-diffusion/, no sidecar
    said = [m for m in logs(events) if "is a pickle" in m]
    assert len(said) == 1 and "m.ckpt.pickle" in said[0] and "\n" not in said[0]
    opts.allow_pickle = True
    res = download(DownloadRequest([srv.url("/m.ckpt")]), opts)
    assert res.files[0].pickle and res.files[0].path.endswith(os.path.join("Stable-diffusion", "m.ckpt"))
    assert json.loads(Path(res.files[0].sidecar).read_text())["pickle"] is True


def test_torch_zip_named_bin_is_a_pickle_not_an_archive(srv, opts):
    srv.routes["/pytorch_model.bin"] = Resource(data=torch_zip())
    res = download(DownloadRequest([srv.url("/pytorch_model.bin")]), opts)
    assert res.files[0].pickle and files_under(opts.root) == ["pytorch_model.bin.pickle"]


def test_pickle_inside_a_zip(srv, opts):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pack/style.safetensors", lora_bytes(10_000))
        z.writestr("pack/embedding.pt", PICKLE)
    srv.routes["/pack.zip"] = Resource(data=buf.getvalue())
    res = download(DownloadRequest([srv.url("/pack.zip")]), opts)
    assert sorted((f.kind, f.pickle) for f in res.files) == [("lora", False), ("other", True)]
    assert files_under(opts.root) == ["Lora/style.json", "Lora/style.safetensors", "embedding.pt.pickle"]


def test_cli_downloads_a_pickle_and_says_so_in_one_line(srv, tmp_path, capsys):
    srv.routes["/v.pt"] = Resource(data=PICKLE)
    assert cli_main(["download", "--to", str(tmp_path), "--proxy", "", srv.url("/v.pt")]) == 0
    assert (tmp_path / "v.pt.pickle").read_bytes() == PICKLE
    out = capsys.readouterr()
    assert sum("is a pickle" in line for line in (out.out + out.err).splitlines()) == 1
