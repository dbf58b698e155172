"""Run by the WebUI before start-up (in a subprocess). Installs only what LoRA Trainer needs and the
host lacks, never upgrading or downgrading a package the host already has; a no-op (a few ms, no pip)
when everything is there, which on A1111 1.10 and Forge is always the case today."""

import importlib.util
import sys

# import name -> pip requirement used only when the import name is missing altogether.
# Lower bounds only: a present package is never touched, whatever its version.
NEEDED = {
    "torch": None,            # the host's; never installed from here (it would pull a different build)
    "safetensors": "safetensors>=0.3",
    "numpy": "numpy",
    "PIL": "Pillow",
    "yaml": "PyYAML",
}


def missing() -> list:
    return [req for mod, req in NEEDED.items() if importlib.util.find_spec(mod) is None and req]


def main() -> int:
    todo = missing()
    if importlib.util.find_spec("torch") is None:
        print("[LoRA Trainer] torch is missing: the WebUI's own install is broken; not installing torch from here.")
    if not todo:
        return 0
    try:
        import launch  # the WebUI's helper: uses its pip, index and constraints
        for req in todo:
            launch.run_pip(f"install {req}", f"LoRA Trainer requirement: {req}")
    except ImportError:  # run by hand outside the WebUI
        import subprocess
        subprocess.check_call([sys.executable, "-m", "pip", "install", *todo])
    return 0


if __name__ == "__main__" or "launch" in sys.modules:
    main()
