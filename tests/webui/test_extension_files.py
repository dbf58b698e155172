"""The WebUI-facing files: registration is cheap and lazy, install.py is a fast no-op, preload adds flags."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STUB = textwrap.dedent('''
    import sys, types
    registered = []
    mods = types.ModuleType("modules")
    sc = types.ModuleType("modules.script_callbacks")
    for name in ("on_ui_tabs", "on_ui_settings", "on_app_started"):
        setattr(sc, name, lambda fn, name=None, _n=name: registered.append(_n))
    mods.script_callbacks = sc
    sys.modules["modules"], sys.modules["modules.script_callbacks"] = mods, sc
''')


def run_py(code: str, cwd: str = ROOT) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_script_registers_callbacks_cheaply_without_heavy_imports(tmp_path):
    code = STUB + textwrap.dedent(f'''
        import importlib.util, json, time
        t = time.perf_counter()
        spec = importlib.util.spec_from_file_location("lora_trainer_tab", {os.path.join(ROOT, "scripts", "lora_trainer_tab.py")!r})
        m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
        dt = time.perf_counter() - t
        heavy = [n for n in ("torch", "gradio", "diffusers", "transformers", "lora_trainer.train", "fastapi") if n in sys.modules]
        m._on_path()
        import lora_trainer.hosts.webui  # importable through the registered package, torch-free
        heavy_after = [n for n in ("torch", "gradio") if n in sys.modules]
        root_on_path = {ROOT!r} in sys.path
        print(json.dumps(dict(dt=dt, registered=registered, heavy=heavy, heavy_after=heavy_after, root_on_path=root_on_path)))
    ''')
    res = run_py(code, cwd=str(tmp_path))  # not the repo root: lora_trainer must come from the script
    assert sorted(res["registered"]) == ["on_app_started", "on_ui_settings", "on_ui_tabs"]
    assert res["heavy"] == [] and res["heavy_after"] == [], res
    assert res["dt"] < 0.3, f"registration took {res['dt']:.3f} s"
    assert not res["root_on_path"], "the extension root (generic names: install, tests, tools) must stay off sys.path"


def test_install_is_a_fast_no_op_when_everything_is_there(tmp_path):
    (tmp_path / "launch.py").write_text("calls = []\ndef run_pip(args, desc=None):\n    calls.append(args)\n")
    code = textwrap.dedent(f'''
        import json, sys, time, runpy
        sys.path.insert(0, {str(tmp_path)!r})
        import launch
        t = time.perf_counter()
        runpy.run_path({os.path.join(ROOT, "install.py")!r})
        print(json.dumps(dict(dt=time.perf_counter() - t, pip=launch.calls)))
    ''')
    res = run_py(code)
    assert res["pip"] == [], "install.py must not touch pip when the host has everything"
    assert res["dt"] < 0.2, res


def test_install_never_names_a_version_for_a_present_package():
    import importlib.util
    spec = importlib.util.spec_from_file_location("ext_install", os.path.join(ROOT, "install.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.NEEDED["torch"] is None  # never installed from here
    assert all("==" not in (req or "") and "<" not in (req or "") for req in mod.NEEDED.values())


def test_preload_adds_flags():
    import importlib.util
    spec = importlib.util.spec_from_file_location("ext_preload", os.path.join(ROOT, "preload.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    parser = argparse.ArgumentParser()
    mod.preload(parser)
    args = parser.parse_args(["--lora-trainer-no-api", "--lora-trainer-work-dir", "/x"])
    assert args.lora_trainer_no_api and args.lora_trainer_work_dir == "/x" and not args.lora_trainer_verify_weights
