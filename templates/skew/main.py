"""Flex Template entry point of the skew check (FLEX_TEMPLATE_PYTHON_PY_FILE in the image)."""

import logging

from pipelines.skew import run

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
