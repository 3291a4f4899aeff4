"""Build script. Pure-Python package; the optional CUDA extension is added in csrc/ (see README)."""
from setuptools import setup

setup()
