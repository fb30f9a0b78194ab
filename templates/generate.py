"""Writes templates/<pipeline>/metadata.json from the options classes: `python -m templates.generate`."""

import json
from pathlib import Path

from templates.specs import PIPELINES, metadata

TEMPLATES_DIR = Path(__file__).resolve().parent


def render(pipeline):
    return json.dumps(metadata(pipeline), indent=2) + "\n"


def main():
    for pipeline in PIPELINES:
        path = TEMPLATES_DIR / pipeline / "metadata.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(render(pipeline))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
