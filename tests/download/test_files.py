"""Naming, routing, archives, pickles, sources (Civitai/HF), sidecars, safety, queue, CLI, kill+resume."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from dlhelpers import files_under, lora_bytes, st_bytes, vae_bytes
from dlserver import Raw, Redirect, Resource

from lora_trainer.cli import main as cli_main
from lora_trainer.download import DownloadManager, DownloadRequest, download, parse_text
from lora_trainer.download.classify import classify_header
from lora_trainer.download.errors import AuthRequiredError, BadRequestError, UnsafeError
from lora_trainer.download.naming import parse_content_disposition, sanitize
from lora_trainer.download.safety import is_blocked_ip

ROOT = Path(__file__).resolve().parents[2]


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_content_disposition_chinese_and_traversal(srv, opts):
    data = lora_bytes(200_000)
    srv.routes["/dl/1"] = Resource(data=data, disposition="attachment; filename=\"fallback.safetensors\"; "
                                   "filename*=UTF-8''%E4%B8%AD%E6%96%87%E6%A8%A1%E5%9E%8B.safetensors")
    raw_utf8 = "风格.safetensors".encode().decode("latin-1")
    srv.routes["/dl/2"] = Resource(data=data, disposition=f'attachment; filename="{raw_utf8}"')
    srv.routes["/dl/3"] = Resource(data=lora_bytes(1000), disposition='attachment; filename="../../evil.safetensors"')
    srv.routes["/dl/4"] = Resource(data=lora_bytes(1000),
                                   disposition="attachment; filename*=UTF-8''..%2F..%2F..%2Fx%2FCON.safetensors")
    names = [Path(download(DownloadRequest([srv.url(f"/dl/{i}")]), opts).path).name for i in range(1, 5)]
    assert names == ["中文模型.safetensors", "风格.safetensors", "evil.safetensors", "_CON.safetensors"]
    assert all(p.startswith("Lora/") for p in files_under(opts.root))
    assert not (opts.root.parent / "evil.safetensors").exists()


def test_sanitize_rules():
    assert sanitize("..") == "download" and sanitize("a/../b.txt") == "b.txt"
    assert sanitize("nul.safetensors") == "_nul.safetensors" and sanitize('a:b*?"<>|.pt') == "a_b______.pt"
    long = sanitize("长" * 200 + ".safetensors")
    assert long.endswith(".safetensors") and len(long.encode()) <= 200
    assert parse_content_disposition('inline; filename="a \\"b\\".bin"') == 'a "b".bin'


def test_same_hash_kept_different_gets_suffix(srv, opts):
    a, b = lora_bytes(50_000), lora_bytes(50_000)
    srv.routes["/a/m.safetensors"] = Resource(data=a)
    srv.routes["/b/m.safetensors"] = Resource(data=b)
    first = download(DownloadRequest([srv.url("/a/m.safetensors")]), opts)
    again = download(DownloadRequest([srv.url("/a/m.safetensors")]), opts)
    assert again.files[0].existed and again.path == first.path
    other = download(DownloadRequest([srv.url("/b/m.safetensors")]), opts)
    assert Path(other.path).name == "m (1).safetensors"
    assert Path(first.path).read_bytes() == a and Path(other.path).read_bytes() == b


def test_classification_and_routing(srv, opts):
    sd1 = st_bytes({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": ([320, 768], "F16"),
                    "cond_stage_model.transformer.text_model.final_layer_norm.weight": ([768], "F16")})
    sdxl = st_bytes({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": ([320, 2048], "F16"),
                     "conditioner.embedders.1.model.ln_final.weight": ([1280], "F16")})
    emb = st_bytes({"emb_params": ([2, 768], "F32")})
    lyco = st_bytes({"lora_unet_x.hada_w1_a": ([4, 4], "F16")})
    for name, data in (("sd1.safetensors", sd1), ("xl.safetensors", sdxl), ("e.safetensors", emb),
                       ("ly.safetensors", lyco), ("v.safetensors", vae_bytes())):
        srv.routes["/" + name] = Resource(data=data)
        download(DownloadRequest([srv.url("/" + name)]), opts)
    got = files_under(opts.root)
    for expect in ("Stable-diffusion/sd1.safetensors", "Stable-diffusion/xl.safetensors", "embeddings/e.safetensors",
                   "Lora/ly.safetensors", "VAE/v.safetensors"):
        assert expect in got
    assert json.loads((opts.root / "Stable-diffusion/xl.json").read_text())["sd version"] == "SDXL"
    header = {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": {"shape": [320, 1024]}}
    assert classify_header(header).detail == "sd2"


def test_zip_unpacks_and_routes(srv, opts):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pack/style.safetensors", lora_bytes(10_000))
        z.writestr("pack/vae/my.safetensors", vae_bytes())
        z.writestr("pack/readme.txt", "hi")
    srv.routes["/pack.zip"] = Resource(data=buf.getvalue())
    res = download(DownloadRequest([srv.url("/pack.zip")]), opts)
    assert sorted(f.kind for f in res.files) == ["lora", "vae"] and res.skipped == ["pack/readme.txt"]
    assert files_under(opts.root) == ["Lora/style.json", "Lora/style.safetensors", "VAE/my.json", "VAE/my.safetensors"]


def test_zip_slip_refused(srv, opts):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ok.safetensors", lora_bytes(1000))
        z.writestr("../../escaped.safetensors", lora_bytes(1000))
    srv.routes["/evil.zip"] = Resource(data=buf.getvalue())
    with pytest.raises(UnsafeError, match="zip-slip"):
        download(DownloadRequest([srv.url("/evil.zip")]), opts)
    assert files_under(opts.root.parent) == []


def test_civitai_token_api_hash_preview_sidecar(srv, opts, monkeypatch):
    data = lora_bytes(100_000)
    opts.civitai_hosts = ("127.0.0.1",)
    seen = []

    def dl(handler):
        seen.append(handler.headers.get("Authorization"))
        if handler.headers.get("Authorization") != "Bearer sekrit":
            return handler._raw(Raw(401, b'{"error":"Unauthorized","message":"login required"}', "application/json"))
        return handler._raw(Raw(302, b"", "text/plain", {"Location": "/files/storage-abc"}))

    srv.routes["/api/download/models/42"] = dl
    srv.routes["/files/storage-abc"] = Resource(data=data, disposition='attachment; filename="cute_style.safetensors"')
    api = {"files": [{"name": "cute_style.safetensors", "primary": True, "hashes": {"SHA256": sha(data).upper()}}],
           "images": [{"url": srv.url("/img.png"), "type": "image"}], "trainedWords": ["cutestyle"],
           "baseModel": "SD 1.5", "model": {"name": "Cute"}}
    srv.routes["/api/v1/model-versions/42"] = Raw(200, json.dumps(api).encode(), "application/json")
    srv.routes["/img.png"] = Raw(200, b"\x89PNG\r\n\x1a\nfake", "image/png")
    monkeypatch.delenv("CIVITAI_TOKEN", raising=False)
    with pytest.raises(AuthRequiredError, match="CIVITAI_TOKEN"):
        download(DownloadRequest([srv.url("/api/download/models/42")]), opts)
    monkeypatch.setenv("CIVITAI_TOKEN", "sekrit")
    res = download(DownloadRequest([srv.url("/api/download/models/42")]), opts)
    f = res.files[0]
    assert f.path.endswith("Lora/cute_style.safetensors") and f.sha256 == sha(data)
    side = json.loads(Path(f.sidecar).read_text())
    assert side["activation text"] == "cutestyle" and side["sd version"] == "SD1"
    assert side["sha256"] == sha(data) and side["source url"].endswith("/api/download/models/42")
    assert Path(f.preview).name == "cute_style.preview.png"
    # the token is not sent to the storage host the redirect leads to (same host here: it would be)
    api["files"][0]["hashes"]["SHA256"] = "0" * 64
    srv.routes["/api/v1/model-versions/42"] = Raw(200, json.dumps(api).encode(), "application/json")
    with pytest.raises(Exception, match="from Civitai"):
        download(DownloadRequest([srv.url("/api/download/models/42")], name="again"), opts)


def test_hf_linked_etag_is_checked(srv, opts):
    data = lora_bytes(50_000)
    srv.routes["/org/repo/resolve/main/w.safetensors"] = Redirect("/cdn-lfs/blob", headers={
        "X-Linked-Etag": f'"{"1" * 64}"', "X-Linked-Size": str(len(data))})
    srv.routes["/cdn-lfs/blob"] = Resource(data=data)
    with pytest.raises(Exception, match="from HuggingFace"):
        download(DownloadRequest([srv.url("/org/repo/resolve/main/w.safetensors")]), opts)
    srv.routes["/org/repo/resolve/main/w.safetensors"].headers["X-Linked-Etag"] = f'"{sha(data)}"'
    res = download(DownloadRequest([srv.url("/org/repo/resolve/main/w.safetensors")]), opts)
    assert Path(res.path).name == "w.safetensors"


def test_custom_headers_sent(srv, opts):
    srv.routes["/h.safetensors"] = Resource(data=lora_bytes(1000))
    download(DownloadRequest([srv.url("/h.safetensors")], headers={"Referer": "https://pan.example/", "Cookie": "a=1"}),
             opts)
    assert all(h.get("Referer") == "https://pan.example/" and h.get("Cookie") == "a=1" for _, _, h in srv.log)


def test_safety_rules(srv, opts):
    for bad in ("file:///etc/passwd", "/etc/passwd", "ftp://x/y", "C:\\models\\a.safetensors"):
        with pytest.raises((UnsafeError, BadRequestError)):
            download(DownloadRequest([bad]), opts)
    srv.routes["/r"] = Redirect("file:///etc/passwd")
    with pytest.raises(UnsafeError):
        download(DownloadRequest([srv.url("/r")]), opts)
    opts.block_private = True
    srv.routes["/x.safetensors"] = Resource(data=lora_bytes(1000))
    with pytest.raises(UnsafeError, match="internal address"):
        download(DownloadRequest([srv.url("/x.safetensors")]), opts)
    with pytest.raises(UnsafeError, match="internal address"):
        download(DownloadRequest([f"http://localhost:{srv.port}/x.safetensors"]), opts)
    assert all(is_blocked_ip(ip) for ip in ("10.1.2.3", "169.254.169.254", "::1", "::ffff:127.0.0.1", "192.168.0.1",
                                            "fe80::1", "0.0.0.0"))
    assert not is_blocked_ip("93.184.216.34")
    assert files_under(opts.root) == []


def test_size_cap(srv, opts):
    from lora_trainer.download.errors import SpaceError

    srv.routes["/big.safetensors"] = Resource(data=lora_bytes(300_000))
    opts.max_bytes = 100_000
    with pytest.raises(SpaceError, match="size cap"):
        download(DownloadRequest([srv.url("/big.safetensors")]), opts)
    assert files_under(opts.root) == []


def test_list_format():
    reqs = parse_text("# comment\n\nmy lora | https://a/x.safetensors https://b/x.safetensors | " + "ab" * 32 +
                      "\nhttps://c/y.safetensors\n")
    assert reqs[0].name == "my lora" and len(reqs[0].urls) == 2 and reqs[0].sha256 == "ab" * 32
    assert reqs[1].urls == ["https://c/y.safetensors"] and reqs[1].name is None
    with pytest.raises(BadRequestError, match="line 1"):
        parse_text("just a name")


def test_queue_concurrency_cancel_persist(srv, opts, tmp_path):
    datas = [lora_bytes(400_000) for _ in range(3)]
    for i, d in enumerate(datas):
        srv.routes[f"/q{i}.safetensors"] = Resource(data=d, rate=100_000)  # ~0.7 s each with 6 connections
    qfile = tmp_path / "queue.json"
    events = []
    mgr = DownloadManager(opts, concurrency=2, state_file=qfile, sinks=(events.append,))
    ids = [mgr.add(DownloadRequest([srv.url(f"/q{i}.safetensors")])) for i in range(3)]
    assert mgr.add(srv.url("/q0.safetensors")) == ids[0]  # already queued: not twice
    mgr.start()
    deadline = time.monotonic() + 5
    while [i["state"] for i in mgr.items()].count("running") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    states = [i["state"] for i in mgr.items()]
    assert states.count("running") == 2 and states.count("queued") == 1
    mgr.cancel(ids[1])
    mgr.shutdown(wait=True)  # "process exit": the running one stays queued
    saved = json.loads(qfile.read_text())["items"]
    assert [i["state"] for i in saved] == ["queued", "cancelled", "queued"]
    mgr2 = DownloadManager(opts, concurrency=2, state_file=qfile).start()
    assert mgr2.wait(timeout=20)
    final = {i["id"]: i for i in mgr2.items()}
    assert final[ids[0]]["state"] == "done" and final[ids[2]]["state"] == "done"
    assert final[ids[1]]["state"] == "cancelled"
    mgr2.retry(ids[1])
    assert mgr2.wait(timeout=20) and mgr2.get(ids[1]).state == "done"
    mgr2.shutdown()
    assert any(e.type == "progress" and e.data["id"] == ids[0] for e in events)


def test_cli_exit_codes(srv, tmp_path, capsys):
    srv.routes["/ok.safetensors"] = Resource(data=lora_bytes(20_000))
    srv.routes["/login.safetensors"] = Raw(200, b"<html><body>login</body></html>")
    base = ["download", "--to", str(tmp_path), "-q", "--proxy", ""]
    assert cli_main([*base, srv.url("/ok.safetensors")]) == 0
    assert (tmp_path / "Lora" / "ok.safetensors").exists()
    assert cli_main([*base, "--retries", "1", srv.url("/login.safetensors")]) == 4
    assert "expired or needs a login" in capsys.readouterr().err
    assert cli_main([*base, "file:///etc/passwd"]) == 7
    assert cli_main([*base, "--sha256", "nothex", srv.url("/ok.safetensors")]) == 2
    lst = tmp_path / "list.txt"
    lst.write_text(f"renamed | {srv.url('/ok.safetensors')} | {sha(srv.routes['/ok.safetensors'].data)}\n")
    assert cli_main([*base, "--flat", str(lst)]) == 0 and (tmp_path / "renamed.safetensors").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_killed_process_resumes(srv, tmp_path):
    """SIGKILL a real `python -m lora_trainer download` mid-file; the same command finishes the rest."""
    data = lora_bytes(3 << 20)
    res = Resource(data=data, rate=512 << 10)
    srv.routes["/k.safetensors"] = res
    cmd = [sys.executable, "-m", "lora_trainer", "download", srv.url("/k.safetensors"), "--to", str(tmp_path),
           "-x", "4", "-q", "--proxy", ""]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    state = tmp_path / "k.safetensors.part.json"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if state.exists():
            try:
                pending = json.loads(state.read_text())["pending"]
            except ValueError:
                continue
            if len(data) - sum(e - s for s, e in pending) > len(data) // 3:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "Lora" / "k.safetensors").exists()
    served_before = res.served
    res.rate = 4 << 20
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "Lora" / "k.safetensors").read_bytes() == data
    assert res.served - served_before < len(data) * 0.8  # resumed, not restarted
    assert not state.exists() and not (tmp_path / "k.safetensors.part").exists()


def test_socks5h_proxy_resolves_remotely(srv, opts):
    from dlproxies import Socks5Proxy

    proxy = Socks5Proxy(user="u", password="p w")
    try:
        data = lora_bytes(300_000)
        srv.routes["/p.safetensors"] = Resource(data=data)
        opts.proxy = f"socks5h://u:p%20w@127.0.0.1:{proxy.port}"
        res = download(DownloadRequest([f"http://localhost:{srv.port}/p.safetensors"]), opts)
        assert res.files[0].sha256 == sha(data)
        assert proxy.seen and all(atyp == 3 and host == "localhost" for atyp, host, _ in proxy.seen)
    finally:
        proxy.close()


def test_http_proxy_with_auth(srv, opts):
    from dlproxies import HttpProxy

    proxy = HttpProxy()
    try:
        data = lora_bytes(300_000)
        srv.routes["/p.safetensors"] = Resource(data=data)
        opts.proxy = f"http://me:secret@127.0.0.1:{proxy.port}"
        res = download(DownloadRequest([srv.url("/p.safetensors")]), opts)
        assert res.files[0].sha256 == sha(data)
        assert proxy.seen and all(t.startswith("http://127.0.0.1:") and a == "Basic bWU6c2VjcmV0"
                                  for _, t, a in proxy.seen)
    finally:
        proxy.close()


def test_free_space_checked_before_start(srv, opts):
    from lora_trainer.download.errors import SpaceError

    srv.routes["/big.safetensors"] = Resource(data=lora_bytes(200_000))
    opts.min_free_bytes = 1 << 60
    with pytest.raises(SpaceError, match="not enough free space"):
        download(DownloadRequest([srv.url("/big.safetensors")]), opts)
    assert not (opts.root / "Lora").exists()
    assert [r for p, r, _ in srv.log] == ["bytes=0-"]  # nothing beyond the probe was fetched


def test_chunked_body_of_unknown_size(srv, opts):
    data = lora_bytes(300_000)

    def chunked(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for i in range(0, len(data), 50_000):
            piece = data[i:i + 50_000]
            handler.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")

    srv.routes["/u.safetensors"] = chunked
    res = download(DownloadRequest([srv.url("/u.safetensors")]), opts)
    assert res.files[0].sha256 == sha(data) and res.files[0].size == len(data)


def test_tokens_only_for_their_hosts(monkeypatch):
    from lora_trainer.download.options import DownloadOptions

    monkeypatch.setenv("HF_TOKEN", "hf_env")
    monkeypatch.setenv("CIVITAI_TOKEN", "civ_env")
    o = DownloadOptions(civitai_token="civ_arg")
    assert o.token_for("civitai.com") == "civ_arg" and o.token_for("huggingface.co") == "hf_env"
    assert o.token_for("cdn-lfs.huggingface.co") is None and o.token_for("evil-civitai.com") is None
    assert o.token_for("www.hf.co") == "hf_env"




def test_manager_for_host(srv, tmp_path):
    class FakeHost:  # the Host protocol the WebUI/standalone hosts implement
        restricted = False

        def __init__(self):
            self.landed = []

        def model_dirs(self):
            m = tmp_path / "webui" / "models"
            return {"lora": str(m / "Lora"), "checkpoint": str(m / "Stable-diffusion"), "vae": str(m / "VAE"),
                    "embedding": str(tmp_path / "webui" / "embeddings"), "other": str(m / "other")}

        def setting(self, key, default=None):
            return {"civitai_token": "t"}.get(key, default)

        def work_dir(self):
            return str(tmp_path / "work")

        def file_landed(self, path, kind):
            self.landed.append((Path(path).name, kind))

    host = FakeHost()
    data = vae_bytes()
    srv.routes["/v.safetensors"] = Resource(data=data)
    mgr = DownloadManager.for_host(host)
    mgr.opts.proxy = ""
    a = mgr.add(f"my_vae | {srv.url('/v.safetensors')} | {sha(data)}")
    b = mgr.add(srv.url("/v.safetensors"), to=str(tmp_path / "elsewhere"))
    mgr.start()
    assert mgr.wait(timeout=20)
    rows = {r["id"]: r for r in mgr.items()}
    assert rows[a]["state"] == "done" and rows[a]["path"].endswith("webui/models/VAE/my_vae.safetensors")
    assert rows[a]["done_bytes"] == len(data) and rows[a]["kind"] == "vae" and rows[a]["error"] == ""
    assert rows[b]["path"] == str(tmp_path / "elsewhere" / "v.safetensors")
    assert ("my_vae.safetensors", "vae") in host.landed
    assert (tmp_path / "work" / "downloads.json").exists()
    mgr.shutdown()
    host.restricted = True
    assert DownloadManager.for_host(host).opts.block_private


def test_same_name_from_two_links_at_once(srv, opts):
    """Two items writing `m.safetensors.part` at the same time would corrupt each other: the second gets its own."""
    a, b = lora_bytes(600_000), lora_bytes(600_000)
    srv.routes["/a/m.safetensors"] = Resource(data=a, rate=1 << 20)
    srv.routes["/b/m.safetensors"] = Resource(data=b, rate=1 << 20)
    mgr = DownloadManager(opts, concurrency=2)
    ids = [mgr.add(srv.url("/a/m.safetensors")), mgr.add(srv.url("/b/m.safetensors"))]
    mgr.start()
    assert mgr.wait(timeout=20)
    paths = sorted(Path(mgr.get(i).result["files"][0]["path"]).read_bytes() == d for i, d in zip(ids, (a, b), strict=True))
    assert paths == [True, True]
    assert sorted(p for p in files_under(opts.root) if p.endswith(".safetensors")) == [
        "Lora/m (1).safetensors", "Lora/m.safetensors"]
    mgr.shutdown()


def test_block_private_checks_every_redirect_hop(srv, opts, monkeypatch):
    """127.0.0.1 plays the public server, 127.0.0.2 the internal one: the redirect hop is refused."""
    from dlserver import TestServer

    import lora_trainer.download.safety as safety

    monkeypatch.setattr(safety, "is_blocked_ip", lambda ip: ip == "127.0.0.2")
    try:
        internal_server = TestServer("127.0.0.2")
    except OSError:
        pytest.skip("127.0.0.2 is not a loopback address here (macOS)")
    with internal_server as internal:
        internal.routes["/secret.safetensors"] = Resource(data=lora_bytes(1000))
        srv.routes["/public.safetensors"] = Redirect(internal.url("/secret.safetensors"))
        opts.block_private = True
        with pytest.raises(UnsafeError, match="127.0.0.2"):
            download(DownloadRequest([srv.url("/public.safetensors")]), opts)
        assert internal.log == []  # never connected
        opts.block_private = False
        assert download(DownloadRequest([srv.url("/public.safetensors")]), opts).files


@pytest.fixture
def tls_files(tmp_path):
    import shutil as _shutil

    if not _shutil.which("openssl"):
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return str(cert), str(key)


def test_https_direct_and_through_connect_proxy(opts, tls_files):
    from dlproxies import HttpProxy
    from dlserver import TestServer

    from lora_trainer.download.errors import NetworkError

    data = lora_bytes(1 << 20)
    with TestServer(tls=tls_files) as tls_srv:
        tls_srv.routes["/s.safetensors"] = Resource(data=data, rate=2 << 20)
        url = f"https://localhost:{tls_srv.port}/s.safetensors"
        with pytest.raises(NetworkError, match="certificate is not trusted.*--ca-file"):  # unknown CA refused
            download(DownloadRequest([url]), opts)
        opts.ca_file = tls_files[0]
        assert download(DownloadRequest([url]), opts).files[0].sha256 == sha(data)
        proxy = HttpProxy()
        try:
            opts.proxy = f"http://127.0.0.1:{proxy.port}"
            res = download(DownloadRequest([url], name="via_proxy"), opts)
            assert res.files[0].sha256 == sha(data)
            assert proxy.seen and all(m == "CONNECT" and t == f"localhost:{tls_srv.port}" for m, t, _ in proxy.seen)
        finally:
            proxy.close()


def test_names_without_content_disposition(srv, opts):
    """No Content-Disposition: Civitai's API file name, else a URL name with an extension (original, then target)."""
    data = lora_bytes(20_000)
    opts.civitai_hosts = ("127.0.0.1",)
    srv.routes["/api/download/models/7"] = Redirect("/blob/0a1b2c")
    srv.routes["/blob/0a1b2c"] = Resource(data=data)
    api = {"files": [{"name": "from_api.safetensors", "primary": True, "hashes": {"SHA256": sha(data)}}]}
    srv.routes["/api/v1/model-versions/7"] = Raw(200, json.dumps(api).encode(), "application/json")
    assert Path(download(DownloadRequest([srv.url("/api/download/models/7")]), opts).path).name == "from_api.safetensors"
    srv.routes["/get/42"] = Redirect("/store/real%20name.safetensors?sig=1")
    srv.routes["/store/real%20name.safetensors"] = Resource(data=lora_bytes(20_000))
    assert Path(download(DownloadRequest([srv.url("/get/42")]), opts).path).name == "real name.safetensors"


def test_https_link_through_https_proxy(opts, tls_files):
    """TLS to the proxy, CONNECT, TLS to the origin inside it (both verified against our CA)."""
    from dlproxies import HttpProxy
    from dlserver import TestServer

    data = lora_bytes(1 << 20)
    with TestServer(tls=tls_files) as tls_srv:
        tls_srv.routes["/t.safetensors"] = Resource(data=data, rate=4 << 20, drops=[None, 200_000])
        proxy = HttpProxy(tls=tls_files)
        try:
            opts.ca_file = tls_files[0]
            opts.proxy = f"https://user:pw@localhost:{proxy.port}"
            res = download(DownloadRequest([f"https://localhost:{tls_srv.port}/t.safetensors"]), opts)
            assert res.files[0].sha256 == sha(data)
            assert proxy.seen and all(m == "CONNECT" and a == "Basic dXNlcjpwdw==" for m, _, a in proxy.seen)
        finally:
            proxy.close()
