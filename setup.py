"""Installs the pipelines and transforms, locally and on Dataflow workers (`--setup_file ./setup.py`).

Dependencies are pinned once, in requirements.txt; requirements.lock is its full resolution.
"""

from pathlib import Path

import setuptools

REQUIREMENTS = [
    line.split("#")[0].strip()
    for line in (Path(__file__).parent / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip()
]

setuptools.setup(
    name="beam-sre-ml-pipelines",
    version="0.1.0",
    description="Apache Beam pipelines for SLIs/SLOs from logs, features, images and model scoring",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["pipelines", "pipelines.*", "transforms", "transforms.*", "sql", "udf"]),
    package_data={"pipelines": ["samples/**/*"], "sql": ["*.sql"]},
    install_requires=REQUIREMENTS,
)
