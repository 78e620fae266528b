"""The one compiled part: InvokeEndpoint's lane (openmaker/api/_lane.c, linked with OpenSSL's
libcrypto for SigV4). Optional: where it cannot be built, invocations take the Python path."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "openmaker.api._lane",
            sources=["openmaker/api/_lane.c"],
            libraries=["crypto", "m"],
            extra_compile_args=["-O2", "-Wall", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
