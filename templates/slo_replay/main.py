"""Flex Template entry point of the SLO replay (FLEX_TEMPLATE_PYTHON_PY_FILE in the image)."""

import logging

from pipelines.slo_replay import run

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
