"""Build the compiled core: every ``lbcore/core/_*_c.pyx`` and ``plugins/lbcore_plugins/_*_c.pyx``
is one extension.

Environment:
  LBCORE_CYTHON_ANNOTATE=1  write Cython's annotated HTML (shows each line that touches Python)
  LBCORE_DEBUG=1            build with -O0 -g
  LBCORE_ONLY=_x_c,_y_c     build only these extensions (fast rebuild of one module)
"""

import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("LBCORE_DEBUG") == "1"

ONLY = set(filter(None, os.environ.get("LBCORE_ONLY", "").split(",")))
SOURCES = {"lbcore.core": "lbcore/core", "lbcore_plugins": "plugins/lbcore_plugins"}
# extensions linked with OpenSSL (Debian's libssl-dev): the route frontend's TLS
OPENSSL = {"_proxy_c"}


def extensions() -> list[Extension]:
    exts = []
    flags = ["-O0", "-g"] if DEBUG else ["-O3"]
    for package, directory in SOURCES.items():
        for pyx in sorted(glob.glob(os.path.join(HERE, directory, "_*.pyx"))):
            stem = os.path.splitext(os.path.basename(pyx))[0]
            if ONLY and stem not in ONLY:
                continue
            exts.append(
                Extension(
                    f"{package}.{stem}",
                    [os.path.relpath(pyx, HERE)],
                    include_dirs=[
                        numpy.get_include(),
                        os.path.join(HERE, "lbcore", "core", "include"),
                        os.path.join(HERE, "plugins", "lbcore_plugins", "include"),
                    ],
                    libraries=["ssl", "crypto"] if stem in OPENSSL else [],
                    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                    extra_compile_args=flags + ["-Wno-unused-function"],
                )
            )
    return exts


setup(
    ext_modules=cythonize(
        extensions(),
        compiler_directives={
            "language_level": "3",
            "embedsignature": True,
            # Safe by default; hot functions turn checks off locally where indices are proven.
            "boundscheck": True,
            "wraparound": True,
            "cdivision": True,
        },
        annotate=os.environ.get("LBCORE_CYTHON_ANNOTATE") == "1",
    ),
)
