"""The classic setuptools shim (`python setup.py ...`, old tools); pyproject.toml holds the whole configuration."""
from setuptools import setup

setup()
