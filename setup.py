"""Package discovery; everything else is in setup.cfg.

setup.cfg cannot combine ``find:`` with an explicitly mapped package, and model_configs/ (JSON data at the
repository root, installed as ``open_clip_ext.model_configs``) needs that mapping.
"""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["open_clip_ext", "open_clip_ext.*", "training_ext", "training_ext.*"])
      + ["open_clip_ext.model_configs"])
