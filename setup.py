"""Packaging for tfrec: e-commerce search and recommendation on TensorFlow/Keras.

The distribution is `tfrec-shop` (the name `tfrec` on PyPI belongs to another project); the import
name and the console script stay `tfrec`.
"""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version: dict = {}
exec((ROOT / "tfrec" / "version.py").read_text(), version)

# The verified stack (../shared/docs/STACK.md); each pin is there for a reason, read it first.
INSTALL_REQUIRES = [
    "tensorflow==2.20.*",  # ScaNN 1.4.2 ops and TF Serving 2.20 are built against 2.20
    "tf-keras==2.20.*",  # Keras 2, needed by TFRS and the Hugging Face TF models
    "tensorflow-text==2.20.*",  # custom ops: must match the TF minor version
    "tensorflow-recommenders==0.7.7",
    "tensorflow-ranking==0.5.3",  # 0.5.5 pins tensorflow<2.16; imported through tfrec.compat
    "transformers>=4.57,<5",  # v5 removed the TensorFlow models
    "keras-tuner[bayesian]==1.4.8",  # imported through tfrec.compat in tf.keras mode; [bayesian]: scipy + scikit-learn
    "tensorboard==2.20.*",  # keras-tuner imports it; TF 2.20 does not pull it in
    "scann==1.4.2",
    "tensorflow-serving-api==2.20.*",
    "safetensors>=0.4",
    "numpy>=1.26",
    "PyYAML>=6.0",
    "tqdm>=4.66",
    "bm25s==0.3.16",  # the lexical baselines (plain and stemmed BM25) every search report compares
    "PyStemmer==3.1.0",  # Snowball stemmers for the stemmed baseline and tfrec's in-graph lexical index
    "matplotlib>=3.8",  # the report's PNG charts (Agg backend: no display needed)
    "pandas>=2.1,<4",  # own data passed as DataFrames (tfrec.train(config, catalog=df, ...)); tested with 3.1
    "pyarrow>=15",  # own data as Parquet files beside CSV
    "psutil>=5.9",  # memory available to the in-memory path, and the process-tree RSS the benchmarks record
    "google-crc32c>=1.5",  # the TFRecord checksums of `tfrec data prepare` shards, written without TensorFlow
    "redis>=8,<9",  # the client of the online store and shared cache (the server is the system's redis-server)
]
# `tfrec data prepare` runs interaction logs through Apache Spark (a Java 17+ runtime must come from a package).
SCALE_REQUIRES = ["pyspark==4.3.0"]

setup(
    name="tfrec-shop",
    version=version["__version__"],
    description="E-commerce search and recommendation: BERT text features fused with "
    "TensorFlow Recommenders retrieval and TF-Ranking listwise ranking.",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    packages=find_packages(include=["tfrec", "tfrec.*"]),
    # The built-in configs (`tfrec train --config quick`) and the starters `tfrec init` writes.
    package_data={"tfrec": ["py.typed", "configs/*.yaml", "config/starters/*.yaml", "preprocess/log4j2.properties"]},
    python_requires=">=3.10,<3.13",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # nbclient + ipykernel: the tests execute notebooks/ with a tiny configuration; import-linter: the layering test;
        # build: the wheel the packaging test installs into a fresh environment (`make test-install`).
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "import-linter==2.17", "nbclient>=0.10", "nbformat>=5.10",
                "ipykernel>=6.29", "build==1.3.0", *SCALE_REQUIRES],
        "scale": SCALE_REQUIRES,
        # The documentation site (`make docs`): MkDocs + Material, API pages from the docstrings (griffe, no imports).
        "docs": ["mkdocs==1.6.1", "mkdocs-material==9.8.1", "mkdocstrings[python]==1.0.8", "mkdocstrings-python==2.0.11",
                 "mkdocs-include-markdown-plugin==7.3.0"],
    },
    entry_points={"console_scripts": ["tfrec=tfrec.cli.main:main"]},
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
