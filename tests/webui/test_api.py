"""The /lora-trainer/v1/ routes over real HTTP (uvicorn on 127.0.0.1) with the standalone host."""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import threading
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from lora_trainer.hosts.api import register  # noqa: E402
from lora_trainer.hosts.standalone import StandaloneHost  # noqa: E402
from lora_trainer.jobs import JobRegistry  # noqa: E402
from tests.helpers.wait import wait_for  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, host):
        from fastapi import FastAPI

        app = FastAPI()
        self.jobs = JobRegistry()
        register(app, host, self.jobs)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 20, what="the API server to start")

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/lora-trainer/v1{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def dataset(tmp_path):
    from PIL import Image

    d = tmp_path / "data" / "2_sks"
    d.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 100, 200)).save(d / f"{i}.png")
        (d / f"{i}.txt").write_text("sks square")
    return str(tmp_path / "data")


@pytest.fixture
def local(tmp_path):
    srv = Server(StandaloneHost(str(tmp_path / "app")))
    yield srv
    srv.close()


@pytest.fixture
def public(tmp_path):
    srv = Server(StandaloneHost(str(tmp_path / "app"), listen="0.0.0.0"))
    yield srv
    srv.close()


def wait(srv, path, timeout=180):
    def finished():
        view = srv.call("GET", path)[1]
        return view if view["state"] not in ("queued", "running") else None

    return wait_for(finished, timeout, interval=0.2, what=f"{path} to finish")


def test_train_status_and_publish(local, dataset, tmp_path):
    cfg = {"base_model": "builtin:tiny-sd1", "train_data_dir": dataset, "output_name": "api_lora", "resolution": 64,
           "enable_bucket": False, "max_train_steps": 3, "lora_rank": 2, "lora_alpha": 2, "save_state": False}
    code, view = local.call("POST", "/train", {"config": cfg})
    assert code == 200, view
    final = wait(local, f"/train/{view['id']}")
    assert final["state"] == "done", final["error"]
    types = [e["type"] for e in final["events"]]
    assert "progress" in types and "done" in types and "published" in types
    assert os.path.isfile(tmp_path / "app" / "models" / "Lora" / "api_lora.safetensors")
    code, listed = local.call("GET", "/train")
    assert [j["id"] for j in listed["jobs"]] == [view["id"]]
    code, tail = local.call("GET", f"/train/{view['id']}?since={final['cursor']}")
    assert tail["events"] == []


def test_stop_route_stops_a_run(local, dataset):
    cfg = {"base_model": "builtin:tiny-sd1", "train_data_dir": dataset, "output_name": "long", "resolution": 64,
           "enable_bucket": False, "max_train_steps": 500, "lora_rank": 2, "save_state": False}
    code, view = local.call("POST", "/train", {"config": cfg})
    assert code == 200, view
    wait_for(lambda: local.call("GET", f"/train/{view['id']}")[1]["progress"], 120, what="the first step")
    assert local.call("POST", f"/train/{view['id']}/stop")[0] == 200
    final = wait(local, f"/train/{view['id']}")
    assert final["state"] == "stopped" and final["result"]["steps"] < 500


def test_bad_input_answers_400_with_the_field(local, dataset):
    code, body = local.call("POST", "/train", {"config": {"train_data_dir": dataset, "lora_rnak": 4,
                                                          "base_model": "builtin:tiny-sd1"}})
    assert code == 400 and "lora_rnak" in body["error"] and "lora_rank" in body["error"]
    code, body = local.call("POST", "/train", {"nothing": 1})
    assert code == 400 and "config" in body["error"]
    assert local.call("GET", "/train/train-999")[0] == 404
    code, body = local.call("POST", "/downloads", {"links": "just words"})
    assert code == 400 and "line 1" in body["error"]


def test_public_listener_refuses_server_paths_and_downloads(public, dataset):
    code, body = public.call("POST", "/train", {"config": {"train_data_dir": dataset,
                                                           "base_model": "builtin:tiny-sd1"}})
    assert code == 403 and "Upload the images" in body["error"]
    code, body = public.call("POST", "/downloads", {"url": "http://127.0.0.1:1/x.safetensors"})
    assert code == 403 and "downloads are disabled" in body["error"]
    code, info = public.call("GET", "/info")
    assert info["restricted"] and info["lora_dir"] is None


def test_download_lands_in_the_lora_folder(local, tmp_path):
    import torch
    from safetensors.torch import save_file

    served = tmp_path / "served"
    served.mkdir()
    sd = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 8),
          "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 2),
          "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(2.0)}
    save_file(sd, str(served / "style.safetensors"), metadata={"ss_base_model_version": "sd_v1"})
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/style.safetensors"
        code, body = local.call("POST", "/downloads", {"links": f"mystyle.safetensors | {url}", "connections": 2})
        assert code == 200, body
        final = wait(local, f"/downloads/{body['jobs'][0]['id']}", timeout=60)
        assert final["state"] == "done", final["error"]
        assert os.path.isfile(tmp_path / "app" / "models" / "Lora" / "mystyle.safetensors")
    finally:
        httpd.shutdown()
