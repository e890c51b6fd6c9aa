"""Packaging for delve. Requirements are loose here; requirements/ pins a tested set."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "delve" / "__init__.py").read_text()).group(1)

setup(
    name="delve",
    version=VERSION,
    description="Live layer saturation and covariance statistics for PyTorch models",
    long_description=(HERE / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="MIT",
    packages=find_packages(include=["delve", "delve.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "numpy",
        "pandas",
        "matplotlib",
        "tqdm",
        "tensorboardX",
    ],
    # requirements/*.txt pin a tested set of the same packages for development and CI.
    extras_require={
        "demo": ["scikit-learn", "tensorboard"],
        "test": ["pytest", "hypothesis", "tensorboard", "scikit-learn", "scipy", "ruff", "vermin"],
        "docs": ["sphinx>=7", "docutils"],
        # delve.integrations.lightning and delve.integrations.huggingface; requirements/integrations.txt pins them.
        "lightning": ["lightning>=2.0"],
        "huggingface": ["transformers>=4.40", "accelerate>=0.26"],
    },
    entry_points={"console_scripts": ["delve=delve.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
