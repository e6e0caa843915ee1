"""Build the Cython hot path; FASTSOCKS_NO_EXTENSIONS=1 builds pure Python."""

import runpy
import sys

from setuptools import setup

# fastsocks/_accel.py alone reads FASTSOCKS_NO_EXTENSIONS; run as a file, since
# the package cannot be imported before it is built.
DISABLED = runpy.run_path("fastsocks/_accel.py")["DISABLED"]

ext_modules = []
if not DISABLED:
    from Cython.Build import cythonize
    from setuptools import Extension

    extensions = [
        Extension("fastsocks._codec", ["fastsocks/_codec.pyx"]),
        Extension("fastsocks._relay", ["fastsocks/_relay.pyx"]),
        Extension("fastsocks._tables", ["fastsocks/_tables.pyx"]),
    ]
    if sys.platform.startswith("linux"):
        # epoll + splice(2): Linux only; elsewhere _relay's protocol pair relays.
        extensions.append(Extension("fastsocks._engine", ["fastsocks/_engine.pyx"]))
        # recvmmsg/sendmmsg: Linux only; elsewhere _datagram_py's asyncio endpoints.
        extensions.append(Extension("fastsocks._datagram", ["fastsocks/_datagram.pyx"]))
    ext_modules = cythonize(
        extensions,
        compiler_directives={"language_level": "3", "embedsignature": True},
    )

setup(ext_modules=ext_modules)
