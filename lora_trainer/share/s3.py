"""Uploading to an S3-compatible store (AWS S3, MinIO, Cloudflare R2) and presigned GET links.

AWS Signature Version 4, written out (about 80 lines) instead of pulling in boto3: a presigned link
is a query string signed with a key derived from the secret, scoped to a day, region and service
(AWS docs "Authenticating Requests: Using Query Parameters" / "Signature Version 4 signing process").
Uploads sign the headers the same way. Path-style addresses (`endpoint/bucket/key`) work on MinIO,
R2 and AWS alike; without an endpoint the AWS virtual-hosted address is used.
Credentials come from the usual environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from lora_trainer.errors import UserError

MAX_EXPIRES = 7 * 24 * 3600  # SigV4 presigned links live at most 7 days
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class StoreError(UserError):
    """An upload target is wrong or refused the upload (the message says which and what to do)."""


@dataclass
class S3Target:
    bucket: str
    prefix: str
    endpoint: str  # scheme://host[:port], no path
    region: str
    access_key: str
    secret_key: str
    session_token: str | None = None

    @classmethod
    def parse(cls, spec: str, endpoint: str | None = None, region: str | None = None) -> S3Target:
        """`s3://bucket/prefix` plus credentials and endpoint from the arguments or the environment."""
        parts = urlsplit(spec)
        if parts.scheme != "s3" or not _BUCKET_RE.match(parts.netloc or ""):
            raise StoreError(f"--to '{spec}': write it as s3://bucket/prefix (bucket: 3-63 lowercase letters, "
                             "digits, . or -)")
        ak, sk = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not ak or not sk:
            raise StoreError("--to s3://...: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the store's keys)")
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        endpoint = (endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                    or "").rstrip("/")
        if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
            raise StoreError(f"--endpoint-url '{endpoint}': give http(s)://host[:port]")
        return cls(parts.netloc, parts.path.strip("/"), endpoint, region, ak, sk,
                   os.environ.get("AWS_SESSION_TOKEN") or None)

    def key(self, *names: str) -> str:
        return "/".join(p for p in (self.prefix, *names) if p)

    def object_url(self, key: str) -> str:
        """Unsigned address of an object (path style on a custom endpoint)."""
        path = "/" + quote(key, safe="/~")
        if self.endpoint:
            return f"{self.endpoint}/{self.bucket}{path}"
        return f"https://{self.bucket}.s3.{self.region}.amazonaws.com{path}"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _signing_key(secret: str, day: str, region: str) -> bytes:
    k = _hmac(("AWS4" + secret).encode(), day)
    return _hmac(_hmac(_hmac(k, region), "s3"), "aws4_request")


def _canonical_query(params: dict[str, str]) -> str:
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))


def _sign(t: S3Target, method: str, url: str, query: dict[str, str], headers: dict[str, str],
          payload_hash: str, when: dt.datetime) -> str:
    """Signature over the canonical request (names of signed headers are lowercase, sorted)."""
    parts = urlsplit(url)
    lower = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    signed = sorted(lower)
    canon_headers = "".join(f"{h}:{lower[h]}\n" for h in signed)
    canonical = "\n".join([method, parts.path or "/", _canonical_query(query), canon_headers, ";".join(signed),
                           payload_hash])
    day = when.strftime("%Y%m%d")
    scope = f"{day}/{t.region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", when.strftime("%Y%m%dT%H%M%SZ"), scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    return hmac.new(_signing_key(t.secret_key, day, t.region), to_sign.encode(), hashlib.sha256).hexdigest()


def _host(url: str) -> str:
    return urlsplit(url).netloc


def presign_get(t: S3Target, key: str, expires_s: int, when: dt.datetime | None = None) -> str:
    """A GET link anyone can use until `when + expires_s` (at most 7 days)."""
    if not 1 <= expires_s <= MAX_EXPIRES:
        raise StoreError(f"--expires: presigned links live 1 second to 7 days, not {expires_s} s")
    when = when or dt.datetime.now(dt.timezone.utc)
    url = t.object_url(key)
    query = {"X-Amz-Algorithm": "AWS4-HMAC-SHA256",
             "X-Amz-Credential": f"{t.access_key}/{when.strftime('%Y%m%d')}/{t.region}/s3/aws4_request",
             "X-Amz-Date": when.strftime("%Y%m%dT%H%M%SZ"), "X-Amz-Expires": str(expires_s),
             "X-Amz-SignedHeaders": "host"}
    if t.session_token:
        query["X-Amz-Security-Token"] = t.session_token
    sig = _sign(t, "GET", url, query, {"host": _host(url)}, "UNSIGNED-PAYLOAD", when)
    return f"{url}?{_canonical_query(query)}&X-Amz-Signature={sig}"


def signed_put_headers(t: S3Target, url: str, body: bytes, content_type: str,
                       when: dt.datetime | None = None) -> dict[str, str]:
    """Headers (with Authorization) for a PUT of `body` to `url`."""
    when = when or dt.datetime.now(dt.timezone.utc)
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": _host(url), "x-amz-content-sha256": payload, "x-amz-date": when.strftime("%Y%m%dT%H%M%SZ"),
               "content-type": content_type}
    if t.session_token:
        headers["x-amz-security-token"] = t.session_token
    sig = _sign(t, "PUT", url, {}, headers, payload, when)
    scope = f"{when.strftime('%Y%m%d')}/{t.region}/s3/aws4_request"
    headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={t.access_key}/{scope}, "
                                f"SignedHeaders={';'.join(sorted(h for h in headers))}, Signature={sig}")
    return headers


def put_object(t: S3Target, key: str, body: bytes, content_type: str = "application/octet-stream") -> None:
    """Upload one object; errors name the object and the store's own reason."""
    import urllib.error
    import urllib.request

    url = t.object_url(key)
    headers = signed_put_headers(t, url, body, content_type)
    headers.pop("host")
    req = urllib.request.Request(url, data=body, method="PUT", headers=headers)
    where = f"s3://{t.bucket}/{key}"
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        body_text = exc.read(4096).decode("utf-8", "replace")
        code = re.search(r"<Code>([^<]+)</Code>", body_text)
        msg = re.search(r"<Message>([^<]+)</Message>", body_text)
        reason = f"{code.group(1)}: {msg.group(1)}" if code and msg else f"HTTP {exc.code}"
        hint = (" (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the region)"
                if exc.code in (401, 403) else "")
        raise StoreError(f"upload to {where} refused: {reason}{hint}") from exc
    except OSError as exc:
        raise StoreError(f"cannot reach the S3 endpoint for {where} ({getattr(exc, 'reason', exc)}); "
                         "check the network, --endpoint-url or AWS_ENDPOINT_URL") from exc
