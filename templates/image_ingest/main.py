"""Flex Template entry point of the image-ingestion pipeline (FLEX_TEMPLATE_PYTHON_PY_FILE in the image)."""

import logging

from pipelines.image_ingest import run

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()
