"""A Hugging Face Space that serves the demo of a model trained with hftransfer, as it is.

The model: $HFTRANSFER_MODEL (a Hub id or a folder), else the Hub id in model_id.txt, else the folder model/ next to
this file. `hftransfer publish-space --model ... --space_id ...` uploads this folder with the hftransfer package and
either the model folder or its Hub id. Locally: `python hftransfer/space_template/app.py` with HFTRANSFER_MODEL set.
"""

import os
from pathlib import Path

from hftransfer.demo import build_demo

HERE = Path(__file__).resolve().parent


def model_name() -> str:
    if os.environ.get("HFTRANSFER_MODEL"):
        return os.environ["HFTRANSFER_MODEL"]
    pinned = HERE / "model_id.txt"
    return pinned.read_text().strip() if pinned.is_file() else str(HERE / "model")


demo = build_demo(model_name())
demo.queue(default_concurrency_limit=1)

if __name__ == "__main__":
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
