"""Packaging for tfrec: e-commerce search and recommendation on TensorFlow/Keras."""
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
]

setup(
    name="tfrec",
    version=version["__version__"],
    description="E-commerce search and recommendation: BERT text features fused with "
    "TensorFlow Recommenders retrieval and TF-Ranking listwise ranking.",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["tfrec", "tfrec.*"]),
    package_data={"tfrec": ["py.typed"]},
    python_requires=">=3.10,<3.13",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # nbclient + ipykernel: the tests execute notebooks/ with a tiny configuration; import-linter: the layering test.
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "import-linter==2.17", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"],
    },
    entry_points={"console_scripts": ["tfrec=tfrec.cli.main:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
