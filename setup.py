"""Build the Cython hot path; FASTSOCKS_NO_EXTENSIONS=1 builds pure Python."""

import os

from setuptools import setup

ext_modules = []
if not os.environ.get("FASTSOCKS_NO_EXTENSIONS"):
    from Cython.Build import cythonize
    from setuptools import Extension

    ext_modules = cythonize(
        [
            Extension("fastsocks._codec", ["fastsocks/_codec.pyx"]),
            Extension("fastsocks._relay", ["fastsocks/_relay.pyx"]),
        ],
        compiler_directives={"language_level": "3", "embedsignature": True},
    )

setup(ext_modules=ext_modules)
