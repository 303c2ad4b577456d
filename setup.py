"""nann-tf: retrieval under a neural similarity metric, served by TensorFlow Serving."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    # The op library is compiled against one TensorFlow minor version; the full
    # `tensorflow` package (not tensorflow-cpu) so tensorflow-serving-api adds no second TF.
    "tensorflow==2.21.*",
    "tensorflow-serving-api==2.21.*",
    "numpy",
    "hnswlib",
    "matplotlib",
]

setup(
    name="nann-tf",
    version="0.1.0",
    description="NANN retrieval (HNSW + neural score, beam search) exported as one TF Serving SavedModel",
    python_requires=">=3.10",
    packages=find_packages(include=["nann_tf", "nann_tf.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest", "hypothesis", "pytest-timeout"]},
    entry_points={"console_scripts": ["nann-tf=nann_tf.cli:main"]},
)
