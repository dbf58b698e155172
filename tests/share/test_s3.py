"""publish --to s3://: uploads signed with our SigV4 code to a real S3-compatible server (moto in server
mode, a subprocess on 127.0.0.1), presigned links, and a pull through those links."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pytest

pytest.importorskip("moto", reason="moto[server] (requirements/dev.txt) runs the S3-compatible test server")
boto3 = pytest.importorskip("boto3")

from lora_trainer.cli import main  # noqa: E402
from lora_trainer.share import s3  # noqa: E402
from lora_trainer.share.manifest import load_manifest_file  # noqa: E402

BUCKET = "team-loras"


def _moto(tmp_path_factory, auth: bool):
    """`python -m moto.server` on a free port; with auth, signatures are checked against IAM keys."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ)
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"  # create user, policy, key; then every call is checked
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2)
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("moto server did not start")
            time.sleep(0.2)
    keys = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret"}
    if auth:
        iam = boto3.client("iam", endpoint_url=url, aws_access_key_id="x", aws_secret_access_key="x",
                           region_name="us-east-1")
        iam.create_user(UserName="publisher")
        iam.put_user_policy(UserName="publisher", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="publisher")["AccessKey"]
        keys = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    client = _client(url, keys)
    client.create_bucket(Bucket=BUCKET)
    return proc, log, url, keys


def _client(url: str, keys: dict[str, str]):
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
                        config=Config(signature_version="s3v4"))


@pytest.fixture(scope="module")
def moto_auth(tmp_path_factory):
    proc, log, url, keys = _moto(tmp_path_factory, auth=True)
    yield url, keys
    proc.terminate()
    proc.wait(10)
    log.close()


@pytest.fixture(scope="module")
def moto_open(tmp_path_factory):
    proc, log, url, keys = _moto(tmp_path_factory, auth=False)
    yield url, keys
    proc.terminate()
    proc.wait(10)
    log.close()


def test_presigned_link_equals_the_reference_signer(monkeypatch):
    """Same clock, same keys: our SigV4 query signature is byte-for-byte botocore's."""
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok/en+=")
    target = s3.S3Target.parse("s3://team-loras/shared loras", "http://127.0.0.1:9000", "eu-west-3")
    key = target.key("ink style", "v1", "ink style+1.safetensors")
    when = dt.datetime(2026, 12, 5, 18, 0, 0, tzinfo=dt.timezone.utc)
    ours = s3.presign_get(target, key, 3600, when)
    req = AWSRequest(method="GET", url=target.object_url(key))
    signer = S3SigV4QueryAuth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "tok/en+="),
                              "s3", "eu-west-3", expires=3600)
    import botocore.auth

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when.replace(tzinfo=None))  # its clock
    signer.add_auth(req)
    q_ours, q_ref = parse_qs(urlsplit(ours).query), parse_qs(urlsplit(req.url).query)
    assert q_ours == q_ref
    assert urlsplit(ours).path == urlsplit(req.url).path


def test_publish_uploads_are_signature_checked(trained, tmp_path, moto_auth, monkeypatch, capsys):
    url, keys = moto_auth
    manifest = tmp_path / "team.json"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert main(["publish", str(trained[1]), "--manifest", str(manifest), "--to", f"s3://{BUCKET}/loras",
                 "--endpoint-url", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused: SignatureDoesNotMatch" in err[0] and "AWS_SECRET_ACCESS_KEY" in err[0]
    assert not manifest.exists()  # a failed upload writes no manifest

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["AWS_SECRET_ACCESS_KEY"])
    assert main(["publish", str(trained[1]), "--manifest", str(manifest), "--to", f"s3://{BUCKET}/loras",
                 "--endpoint-url", url, "--expires", "2h"]) == 0
    v = load_manifest_file(manifest).entry("inkstyle").latest
    stored = _client(url, keys).get_object(Bucket=BUCKET, Key="loras/inkstyle/v1/inkstyle.safetensors")["Body"]
    assert stored.read() == (trained[1] / "inkstyle.safetensors").read_bytes()
    assert parse_qs(urlsplit(v.urls[0]).query)["X-Amz-Expires"] == ["7200"]
    left = dt.datetime.strptime(v.expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc) - \
        dt.datetime.now(dt.timezone.utc)
    assert 7190 < left.total_seconds() <= 7200
    assert v.preview is not None and "X-Amz-Signature=" in v.preview.urls[0]


def test_publish_to_s3_then_pull_through_presigned_links(trained, tmp_path, moto_open, monkeypatch, opts):
    url, keys = moto_open
    for k, val in keys.items():
        monkeypatch.setenv(k, val)
    manifest = tmp_path / "team.json"
    for n in (1, 2):
        assert main(["publish", str(trained[n]), "--manifest", str(manifest), "--to", f"s3://{BUCKET}/t",
                     "--endpoint-url", url]) == 0
    from lora_trainer.share.pull import pull

    models = tmp_path / "models"
    report = pull(str(manifest), models, opts)
    assert [o.status for o in report.outcomes] == ["installed"] and report.outcomes[0].version == 2
    assert (models / "Lora" / "inkstyle.preview.png").is_file()
    assert pull(str(manifest), models, opts).downloaded == 0
    # republishing the same file refreshes the links, adds no version
    assert main(["publish", str(trained[2]), "--manifest", str(manifest), "--to", f"s3://{BUCKET}/t",
                 "--endpoint-url", url]) == 0
    assert [v.version for v in load_manifest_file(manifest).entry("inkstyle").versions] == [1, 2]


def test_bad_targets_named(tmp_path, trained, monkeypatch, capsys):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    assert main(["publish", str(trained[1]), "--manifest", str(tmp_path / "m.json"), "--to", "s3://B/x"]) == 2
    assert "write it as s3://bucket/prefix" in capsys.readouterr().err
    assert main(["publish", str(trained[1]), "--manifest", str(tmp_path / "m.json"), "--to", "s3://bucket/x"]) == 2
    assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()


def test_unreachable_store_one_line(trained, tmp_path, monkeypatch, capsys):
    from shareserver import closed_port_url

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    manifest = tmp_path / "team.json"
    assert main(["publish", str(trained[1]), "--manifest", str(manifest), "--to", f"s3://{BUCKET}/x",
                 "--endpoint-url", closed_port_url()]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the S3 endpoint" in err[0]
    assert not manifest.exists()
