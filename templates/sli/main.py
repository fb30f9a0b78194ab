"""Flex Template entry point of the SLI pipeline (FLEX_TEMPLATE_PYTHON_PY_FILE in the image)."""

import logging

from pipelines.sli import run

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
