"""Download throughput: ours vs aria2c and curl on a local server (same run, same file, interleaved).

1. Throttled: every connection limited to BENCH_RATE_MB MB/s (default 2), file BENCH_MB MB (default 200).
   Ours with -x BENCH_CONNECTIONS (16, our default) vs `aria2c -x16 -s16` (as users run it; aria2's default
   20 MiB minimum split leaves it fewer connections on a 200 MB file, so `-k1M` is measured too)
   vs `curl` (one connection; stopped after BENCH_CURL_MAX_S seconds, throughput from bytes received).
2. Unthrottled loopback (sendfile): ours (-x16 and -x1) vs curl, `curl | sha256sum` (a verified file in
   one pass, like ours), `curl -o && sha256sum` (download, then hash) and `aria2c -x16 -s16`.

Ours is measured twice: the CLI as a user runs it (`python -m lora_trainer download`, Python start-up and
imports included, with a bytecode cache as an installed package has one) and in-process (`download()`
timed inside an already started interpreter). The start-up alone is a row of its own. Each client runs
BENCH_REPEAT (3) times, interleaved with the others; the table shows medians (wall, CPU = user+sys of
the client process and its children). Ratios = our median throughput / theirs; > 1 means we are faster.
BENCH_BASELINE=/path/to/old/checkout adds "before" rows (its lora_trainer, same runs) for comparisons.
Quick run: BENCH_MB=20 python bench/download_bench.py
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "download"))

MB = 1 << 20
SIZE_MB = int(os.environ.get("BENCH_MB", "200"))
RATE = float(os.environ.get("BENCH_RATE_MB", "2")) * MB
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
CURL_MAX_S = float(os.environ.get("BENCH_CURL_MAX_S", "5"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
BASELINE = os.environ.get("BENCH_BASELINE")
IMPORTS = "import lora_trainer.cli, lora_trainer.commands.download, lora_trainer.download"


def inproc_main(url: str, dest: str, connections: int) -> None:
    """Child mode: time download() only (interpreter already started, modules imported)."""
    from lora_trainer.download import DownloadOptions, DownloadRequest
    from lora_trainer.download.fetch import download

    opts = DownloadOptions(root=Path(dest), route=False, connections=connections, proxy="")
    r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    download(DownloadRequest([url], name="bench.dat"), opts)
    wall, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall": wall, "cpu": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime}))


def run(cmd: list[str], out: Path | None, env: dict, cwd: Path) -> tuple[float, float, int]:
    """(wall seconds, child CPU seconds, bytes at out) for one client run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env=env, cwd=cwd)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    size = out.stat().st_size if out is not None and out.exists() else 0
    if proc.returncode not in (0, 28):  # 28: curl --max-time reached (expected on the throttled run)
        print(f"  ! {cmd[0]} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    if "--inproc" in cmd and proc.returncode == 0:  # the child timed download() itself
        inner = json.loads(proc.stdout.strip().splitlines()[-1])
        wall, cpu = inner["wall"], inner["cpu"]
    if out is not None and out.exists():
        out.unlink()
    return wall, cpu, size


def main() -> int:
    from dlserver import Resource, TestServer

    work = Path(tempfile.mkdtemp(prefix="dlbench-"))
    src = work / "src.dat"
    with open(src, "wb") as f:
        for _ in range(SIZE_MB):
            f.write(os.urandom(MB))
    size = src.stat().st_size
    aria2, curl = shutil.which("aria2c"), shutil.which("curl")
    # our children: a bytecode cache like an installed package (this machine sets PYTHONDONTWRITEBYTECODE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    trees = [("ours", ROOT)] + ([("before", Path(BASELINE).resolve())] if BASELINE else [])
    envs = {label: {**env, "PYTHONPATH": str(tree)} for label, tree in trees}
    for label, tree in trees:  # warm the bytecode cache, outside the timings
        subprocess.run([sys.executable, "-c", IMPORTS], env=envs[label], cwd=tree, check=True)
    load_before = os.getloadavg()
    rows: list[tuple[str, str, float, float, float]] = []
    with TestServer() as srv:
        srv.routes["/throttled/bench.dat"] = Resource(path=str(src), rate=RATE)
        srv.routes["/fast/bench.dat"] = Resource(path=str(src))
        for case, url in (("throttled", srv.url("/throttled/bench.dat")), ("loopback", srv.url("/fast/bench.dat"))):
            runs: list[tuple[str, list[str], Path | None, dict, Path]] = []
            for label, tree in trees:
                for n in ((CONNS,) if case == "throttled" else (CONNS, 1)):
                    d = work / f"{label}-{case}-{n}"
                    runs.append((f"{label} CLI -x{n}", [sys.executable, "-m", "lora_trainer", "download", url,
                                                       "--to", str(d), "--flat", "-q", "--proxy", "", "-x", str(n),
                                                       "--name", "bench.dat"], d / "bench.dat", envs[label], tree))
                for n in ((CONNS,) if case == "throttled" else (CONNS, 1)):
                    d = work / f"{label}-{case}-inproc-{n}"
                    runs.append((f"{label} in-process -x{n}", [sys.executable, str(ROOT / "bench" / "download_bench.py"),
                                                              "--inproc", url, str(d), str(n)],
                                 d / "bench.dat", envs[label], tree))
            if case == "loopback":
                runs.append(("python start-up + imports", [sys.executable, "-c", IMPORTS], None, envs["ours"], ROOT))
            if aria2:
                variants = ((f"aria2c -x{CONNS} -s{CONNS}", []), (f"aria2c -x{CONNS} -s{CONNS} -k1M", ["-k1M"]))
                for label, extra in variants if case == "throttled" else variants[:1]:
                    d = work / f"a{len(runs)}"
                    runs.append((label, [aria2, f"-x{CONNS}", f"-s{CONNS}", *extra, "-q", "--allow-overwrite=true",
                                         "--file-allocation=none", "-d", str(d), "-o", "bench.dat", url],
                                 d / "bench.dat", env, ROOT))
            if curl:
                d = work / f"c-{case}"
                d.mkdir()
                cmd = [curl, "-s", "-o", str(d / "bench.dat"), url]
                if case == "throttled":
                    cmd[1:1] = ["--max-time", str(CURL_MAX_S)]
                runs.append(("curl", cmd, d / "bench.dat", env, ROOT))
                if case == "loopback" and shutil.which("sha256sum"):
                    # what a user does to get a verified file with curl: hash while saving, or save then hash
                    out = d / "verified.dat"
                    runs.append(("curl | tee | sha256sum", ["sh", "-c", f"{curl} -s {url} | tee {out} | sha256sum"],
                                 out, env, ROOT))
                    runs.append(("curl -o && sha256sum", ["sh", "-c", f"{curl} -s -o {out} {url} && sha256sum {out}"],
                                 out, env, ROOT))
            results: dict[str, list[tuple[float, float, int]]] = {label: [] for label, *_ in runs}
            for _ in range(REPEAT):
                for label, cmd, out, cenv, cwd in runs:
                    results[label].append(run(cmd, out, cenv, cwd))
            for label, *_ in runs:
                r = results[label]
                wall, cpu = statistics.median(w for w, _, _ in r), statistics.median(c for _, c, _ in r)
                got = min(g for _, _, g in r)
                if label.startswith("python"):
                    rows.append((case, label, wall, cpu, -1.0))
                    continue
                rows.append((case, label, wall, cpu, statistics.median(g / MB / w for w, _, g in r)))
                if got != size:
                    rows[-1] = (case, f"{label} ({got / size:.0%} of file)", wall, cpu, rows[-1][4])
    load_after = os.getloadavg()
    print(f"\nfile {size / MB:.0f} MiB; throttled = {RATE / MB:g} MiB/s per connection; medians of {REPEAT} "
          f"interleaved runs; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
          f"({os.cpu_count()} CPUs); aria2c {'found' if aria2 else 'ABSENT (apt-get install aria2)'}, "
          f"curl {'found' if curl else 'ABSENT (apt-get install curl)'}")
    print(f"{'case':10} {'client':30} {'wall s':>8} {'MiB/s':>8} {'CPU s':>7}")
    for case, label, wall, cpu, mbps in rows:
        print(f"{case:10} {label:30} {wall:8.2f} {'' if mbps < 0 else f'{mbps:8.1f}':>8} {cpu:7.2f}")
    speed = {(c, lab): v for c, lab, _, _, v in rows if v > 0}
    link = CONNS * RATE / MB
    print(f"\nheadline (uptime load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}):")
    for how in ("CLI", "in-process"):
        mine = speed.get(("throttled", f"ours {how} -x{CONNS}"))
        ref = speed.get(("throttled", f"aria2c -x{CONNS} -s{CONNS} -k1M"))
        if mine:
            print(f"  throttled -x{CONNS}, ours {how}: {mine:.1f} MiB/s = {mine / link:.2f} of the link ({link:g} MiB/s)"
                  + (f"; vs aria2c -x{CONNS} -s{CONNS} -k1M: {mine / ref:.2f}" if ref else ""))
    for how in ("CLI", "in-process"):
        mine, ref = speed.get(("loopback", f"ours {how} -x1")), speed.get(("loopback", "curl"))
        if mine and ref:
            print(f"  loopback -x1, ours {how} vs curl: {mine / ref:.2f} (ours hashes SHA-256 too; "
                  f"vs curl | tee | sha256sum: {mine / speed.get(('loopback', 'curl | tee | sha256sum'), mine):.2f})")
    print("\nratios (our median throughput / theirs; > 1 means we are faster):")
    for case in ("throttled", "loopback"):
        ours = [(lab, v) for c, lab, _, _, v in rows if c == case and lab.startswith(("ours", "before")) and v > 0]
        theirs = [(lab, v) for c, lab, _, _, v in rows if c == case and not lab.startswith(("ours", "before", "python"))
                  and v > 0]
        for mine, v in ours:
            print(f"  {case:10} {mine:22} vs " + ", ".join(f"{lab}: {v / w:.2f}" for lab, w in theirs))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inproc"]:
        inproc_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
