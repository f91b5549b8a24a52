#!/usr/bin/env python3
"""Finds libcublas.so.13 and links the names cudarc tries first to it.

    find-cublas.py LINK_DIR

cudarc dlopens cuBLAS by name and tries the unversioned libcublas.so before libcublas.so.13,
so an older toolkit's development link (libcublas.so -> .so.12) on the loader's path would
be opened instead, and ponder would refuse its version. A GPU machine may also hold CUDA 13's
cuBLAS only in a toolkit outside ld.so.conf or in PyTorch's pip wheels
(site-packages/nvidia/.../lib). This script finds libcublas.so.13 (where the loader opens it,
else in those places), makes LINK_DIR/libcublas.so and LINK_DIR/libcublasLt.so point at it
and its Lt sibling, and prints the directory that holds it. gpu-run.sh puts LINK_DIR and that
directory first on LD_LIBRARY_PATH. Exit status 1, with a message, when it is nowhere.
"""
import ctypes
import glob
import os
import site
import sys

LIBS = ("libcublas", "libcublasLt")
MAJOR = "13"


def loaded_path(name: str):
    """The file the dynamic loader opens for `name`, or None."""
    try:
        ctypes.CDLL(name)
    except OSError:
        return None
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            # The maps name the file itself (libcublas.so.13.0.2.14), not the soname.
            if os.path.basename(path).startswith(name):
                return os.path.realpath(path)
    return None


def roots() -> list:
    r = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", "")]
    r += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    try:
        r += site.getsitepackages() + [site.getusersitepackages()]
    except AttributeError:  # some virtualenvs lack getsitepackages
        pass
    r += ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/opt"]
    return [x for x in r if x and os.path.isdir(x)]


def find_dir():
    name = f"libcublas.so.{MAJOR}"
    path = loaded_path(name)
    if path:
        return os.path.dirname(path)
    for root in roots():
        hits = sorted(glob.glob(os.path.join(root, "**", name), recursive=True))
        if hits:
            return os.path.dirname(hits[0])
    return None


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: find-cublas.py LINK_DIR", file=sys.stderr)
        return 2
    links = sys.argv[1]
    d = find_dir()
    if d is None:
        print(f"libcublas.so.{MAJOR} is in none of the loader's paths or {roots()}",
              file=sys.stderr)
        return 1
    os.makedirs(links, exist_ok=True)
    for lib in LIBS:
        target = os.path.join(d, f"{lib}.so.{MAJOR}")
        link = os.path.join(links, f"{lib}.so")
        if os.path.lexists(link):
            os.remove(link)
        if os.path.exists(target):
            os.symlink(target, link)
        else:
            print(f"warning: {target} is missing", file=sys.stderr)
    print(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
