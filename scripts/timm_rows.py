"""The timm rows of the architecture matrix on the real timm networks, wherever timm imports.

    python scripts/timm_rows.py        # e.g. on a GPU machine, whose CUDA torch matches PyPI's torchvision

`tests/test_timm.py` runs on this project's CPU machine against timm's module layouts (timm cannot import there:
see `tests/support/timm_layout.py`). With HFTRANSFER_REAL_TIMM=1 the same tests build the real networks with
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
