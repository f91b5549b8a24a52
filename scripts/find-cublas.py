#!/usr/bin/env python3
"""Prints the directory of libcublas.so.13 when the dynamic loader cannot open it by name.

gpu-run.sh puts that directory on LD_LIBRARY_PATH: cudarc dlopens cuBLAS by name, and a GPU
machine may hold it only in a CUDA toolkit outside ld.so.conf or in PyTorch's pip wheels
(site-packages/nvidia/.../lib). Prints nothing when the loader finds it already or nothing is
found; the ponder binary then says which library is missing.
"""
import ctypes
import glob
import os
import site
import sys

NAME = "libcublas.so.13"


def loadable() -> bool:
    try:
        ctypes.CDLL(NAME)
        return True
    except OSError:
        return False


def roots() -> list:
    r = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", "")]
    r += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    try:
        r += site.getsitepackages() + [site.getusersitepackages()]
    except AttributeError:  # some virtualenvs lack getsitepackages
        pass
    r += ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/opt"]
    return [x for x in r if x and os.path.isdir(x)]


def main() -> int:
    if loadable():
        return 0
    for root in roots():
        hits = sorted(glob.glob(os.path.join(root, "**", NAME), recursive=True))
        if hits:
            print(os.path.dirname(hits[0]))
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
