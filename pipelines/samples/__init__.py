"""The bundled samples: every pipeline's default input and config when no flag names one (also the tests'
fixtures). `python -m pipelines.samples.<name>` regenerates a sample."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
SLI_DIR = ROOT / "sli"
FEATURES_DIR = ROOT / "features"
SKEW_DIR = ROOT / "skew"
WINDOW_FEATURES_DIR = ROOT / "window_features"
IMAGES_DIR = ROOT / "images"
SCORE_DIR = ROOT / "score"
