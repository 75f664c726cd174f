"""Install the peer arms' libraries offline, from wheel folders carried to the GPU machine.

The GPU image has torch, transformers, PEFT and JAX but not Liger, Unsloth or
Tunix, nor several of their dependencies; one device call carries at most
64 MiB, so their wheels (Python 3.12, manylinux x86_64) come in several
folders, installed one call at a time, into a folder outside the repository:

    python bench/install_peers.py --target /tmp/site .whl .whl-gpu1   # keras, keras-hub; bitsandbytes, Liger, trl, datasets < 5
    python bench/install_peers.py --target /tmp/site .whl-gpu2        # Unsloth, unsloth_zoo and their own needs
    PYTHONPATH=/tmp/site:$PWD python bench/train_throughput.py ...

Each wheel goes into the target without its dependencies (they are other
wheels of the folders, or the machine's own packages), unless the machine
already has that distribution in a version the peers accept (`ACCEPTED`; any
version for the others), so the binary packages the image already has are
not shadowed. Use a target outside the repository: a warm device machine
keeps `/tmp/site` between calls, while a git-ignored folder inside the
repository lost its top-level `.py` files between two calls (2026-11-29).
Prints one line per wheel: installed, or kept and why.
"""

import argparse
import glob
import importlib.metadata
import os
import subprocess
import sys

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

# Unsloth 2026.10.9 pins these; Tunix's qwix needs a recent flax.
ACCEPTED = {"datasets": SpecifierSet("<5"), "trl": SpecifierSet("<=1.15.0"), "flax": SpecifierSet(">=0.12.0")}


def wheel_name(path):
    """The canonical distribution name of a wheel file.

    >>> wheel_name("dist/unsloth_zoo-2026.10.9-py3-none-any.whl")
    'unsloth-zoo'
    """
    return canonicalize_name(os.path.basename(path).split("-")[0])


def keeps(name, installed):
    """Why the machine's own `installed` version of `name` will do, or None to install the wheel.

    >>> keeps("datasets", "5.2.0") is None, keeps("pandas", "2.2.3")
    (True, 'pandas 2.2.3 is installed')
    """
    if installed is None or (name in ACCEPTED and installed not in ACCEPTED[name]):
        return None
    return f"{name} {installed} is installed"


def installed_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="Folders of .whl files.")
    parser.add_argument("--target", default="/tmp/site",
                        help="Where to install (put it on PYTHONPATH; default /tmp/site, outside the repository).")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.target))  # what an earlier call installed counts as installed
    importlib.invalidate_caches()
    wheels = sorted(path for folder in args.folders for path in glob.glob(os.path.join(folder, "*.whl")))
    if not wheels:
        print(f"no wheels in {' '.join(args.folders)}", file=sys.stderr)
        return 2
    todo = []
    for path in wheels:
        reason = keeps(wheel_name(path), installed_version(wheel_name(path)))
        print(f"kept: {reason}" if reason else f"install: {os.path.basename(path)}")
        todo += [] if reason else [path]
    if todo:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--upgrade",
                        "--target", args.target] + todo, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
