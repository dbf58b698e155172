"""Find a Stable Diffusion WebUI Forge checkout and make its `backend/` importable.

LT_FORGE_DIR names the checkout's root (the folder holding `backend/`, `modules/`,
`repositories/huggingface_guess/`, `packages_3rdparty/`); without it the local harness build is
tried. Forge's backend needs its own pins (transformers 4.46, diffusers 0.31, einops, sentencepiece):
run these tests with the Forge venv, e.g. the harness's `venv/bin/python -m pytest tests/forge`.
"""

from __future__ import annotations

import os
import sys

CANDIDATES = ("/work/harness/forge/forge/sdforge", "/work/harness/forge/sdforge")


def forge_root() -> str | None:
    env = os.environ.get("LT_FORGE_DIR")
    for path in ([env] if env else []) + list(CANDIDATES):
        if path and os.path.isdir(os.path.join(path, "backend")) and os.path.isdir(os.path.join(path, "modules_forge")):
            return os.path.abspath(path)
    return None


def _missing_pins() -> str:
    """What this interpreter lacks to import Forge's backend (checked without importing anything)."""
    import importlib.metadata
    import importlib.util

    missing = [m for m in ("einops", "sentencepiece", "diskcache", "diffusers") if importlib.util.find_spec(m) is None]
    try:
        if int(importlib.metadata.version("transformers").split(".")[0]) >= 5:
            missing.append("transformers<5")
    except importlib.metadata.PackageNotFoundError:
        missing.append("transformers")
    return ", ".join(missing)


def import_backend() -> tuple[str | None, str]:
    """(root, "") when Forge's backend imports, else (None, why not)."""
    root = forge_root()
    if root is None:
        return None, "no Forge checkout (set LT_FORGE_DIR to the root of a stable-diffusion-webui-forge clone)"
    missing = _missing_pins()
    if missing:
        return None, f"this Python lacks Forge's pins ({missing}); run tests/forge with the Forge venv"
    added = [p for p in (os.path.join(root, "packages_3rdparty"), os.path.join(root, "repositories", "huggingface_guess"),
                         root) if p not in sys.path]
    sys.path[:0] = added
    before = set(sys.modules)
    argv = sys.argv
    sys.argv = [argv[0], "--always-cpu"]  # backend.args parses the command line at import
    cwd = os.getcwd()
    try:
        os.chdir(root)  # modules.* resolve paths from the working folder on import
        from modules import options, shared, shared_options

        if shared.opts is None:  # the WebUI's options with their defaults, set before Forge's backend reads them
            shared.opts = options.Options(shared_options.options_templates, shared_options.restricted_opts)
        import backend.loader  # noqa: F401
        import backend.memory_management  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means: not runnable here
        for p in added:  # leave no trace for the other tests of this session (Forge has a `modules` package)
            sys.path.remove(p)
        for name in set(sys.modules) - before:
            if str(getattr(sys.modules[name], "__file__", "") or "").startswith(root):
                del sys.modules[name]
        return None, f"Forge's backend does not import with this Python ({type(exc).__name__}: {exc}); " \
                     "run tests/forge with the Forge venv"
    finally:
        sys.argv = argv
        os.chdir(cwd)
    return root, ""
