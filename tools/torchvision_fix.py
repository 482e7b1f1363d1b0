"""Install (or remove) a start-up hook that makes a CUDA torchvision importable on a CPU torch.

Some machines can only get a CPU build of torch next to a CUDA build of torchvision. Loading
torchvision's C extension then fails, and ``import torchvision`` dies with
``operator torchvision::nms does not exist`` (and so does every transformers modeling import,
because transformers imports torchvision when it is installed). Defining the schemas of the two
missing operators before torchvision is imported is enough for everything this project uses
(transforms, timm, transformers); only ``torchvision.ops`` and ``torchvision.io`` stay unusable.

The fix is an environment quirk, so it lives in the virtual environment, not in the ``minigpt4``
package: ``python tools/torchvision_fix.py`` checks, in a fresh interpreter, whether
``import torchvision`` works. If it does not, it writes ``minigpt4_torchvision_fix.pth`` and the
module it imports into site-packages; every interpreter of the venv (pytest, torchrun workers,
the demo) then applies the fix lazily, the first time torchvision is imported, and only if the
extension did not load. If torchvision works on its own, any earlier hook is removed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import sysconfig
from pathlib import Path

HOOK_MODULE = "_minigpt4_torchvision_fix"
PTH_NAME = "minigpt4_torchvision_fix.pth"

HOOK_SOURCE = '''\
"""Written by minigpt4's tools/torchvision_fix.py; see that file for why this exists."""

import importlib.abc
import importlib.machinery
import sys

_LIBRARY = None  # the torch.library.Library must outlive the process's imports


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.submodule_search_locations:
            _define_missing_ops(spec.submodule_search_locations[0])
        return spec


def _define_missing_ops(package_dir):
    global _LIBRARY
    import glob
    import os

    import torch

    for lib in glob.glob(os.path.join(package_dir, "_C*.so")):
        try:
            torch.ops.load_library(lib)
            return  # the extension loads: nothing to fix
        except OSError:
            break
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _LIBRARY.define(op + "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


sys.meta_path.insert(0, _Finder())
'''

PROBE = "import torchvision, torchvision.transforms"


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _torchvision_imports() -> bool:
    env_flag = "-S"  # no site: the probe must not see an existing hook
    site = str(_site_packages())
    code = f"import sys; sys.path.append({site!r}); {PROBE}"
    return subprocess.run([sys.executable, env_flag, "-c", code], capture_output=True).returncode == 0


def main() -> int:
    site = _site_packages()
    pth, module = site / PTH_NAME, site / f"{HOOK_MODULE}.py"
    if _torchvision_imports():
        for path in (pth, module):
            path.unlink(missing_ok=True)
        print("torchvision imports on its own: no start-up hook needed")
        return 0
    module.write_text(HOOK_SOURCE)
    pth.write_text(f"import {HOOK_MODULE}\n")
    check = subprocess.run([sys.executable, "-c", PROBE + "; import timm"], capture_output=True, text=True)
    if check.returncode != 0:
        print(check.stderr, file=sys.stderr)
        print("torchvision still fails to import with the start-up hook installed", file=sys.stderr)
        return 1
    print(f"torchvision needs the CPU-torch fix: start-up hook installed in {site}")
    return 0


if __name__ == "__main__":
    # Any argument is refused and --help answers, so that asking for help never installs anything.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    sys.exit(main())
