"""The timm rows of the architecture matrix on the real timm networks, wherever timm imports.

    make timm-rows                     # here: its own venv with torch 2.14.1 + torchvision 0.29.1 (runs on a CPU)
    python scripts/timm_rows.py        # in any environment where timm imports (a GPU machine's CUDA torch, say)

`make test` runs `tests/test_timm.py` against timm's module layouts, in the project's venv, whose CPU torch 2.13.0
cannot load PyPI's torchvision (see `tests/support/timm_layout.py`). With HFTRANSFER_REAL_TIMM=1 the same tests build
the real networks with
`timm.create_model` (random init: the layout is what is tested, not ImageNet weights), save them as timm's Hub folders
are (`pretrained_cfg` in config.json, read by `TimmWrapperImageProcessor`) and train, reload and compare them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    try:
        import timm
    except Exception as err:  # noqa: BLE001 - any import failure means: not on this machine
        print(f"timm does not import here ({type(err).__name__}: {err}); tests/test_timm.py covers its layouts")
        return 2
    print(f"timm {timm.__version__}: running tests/test_timm.py on the real networks")
    environment = dict(os.environ, HFTRANSFER_REAL_TIMM="1")
    return subprocess.call([sys.executable, "-m", "pytest", "-q", str(ROOT / "tests" / "test_timm.py")],
                           cwd=ROOT, env=environment)


if __name__ == "__main__":
    sys.exit(main())
