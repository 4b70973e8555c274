#!/usr/bin/env python3
"""Checks that the project's #include "folder/..." lines point down the layers (or stay inside
the folder), as the folder READMEs state them. A ctest entry ("layers: ...") runs it.

    tools/check_includes.py [SOURCE_DIR]     exit 0: every include is allowed; 1: lists the others

The rule, bottom up (each folder may include itself and what its row names):
    common/        std only
    tensor/        common
    kernels/       common, tensor      (cpu/ and cuda/ never include each other; kernels/common/
                                        is the host/device math both use)
    nn/            common, tensor
    teacher_port/  common, tensor, kernels/common
    io/            common, tensor
    protocol/      common
    net/           common
    cli/           common, tensor, nn
    teacher/       common, tensor, nn, teacher_port, io
    edge/          everything above except server/
    server/        everything above except edge/
    bench/         everything except edge/ and server/
tests/ and tools/ may include anything.
"""
import os
import re
import sys

BELOW = {
    "common": [],
    "tensor": ["common"],
    "kernels": ["common", "tensor"],
    "nn": ["common", "tensor"],
    "teacher_port": ["common", "tensor", "kernels/common"],
    "io": ["common", "tensor"],
    "protocol": ["common"],
    "net": ["common"],
    "cli": ["common", "tensor", "nn"],
    "teacher": ["common", "tensor", "nn", "teacher_port", "io"],
}
LIBRARY = ["common", "tensor", "kernels", "nn", "teacher_port", "io", "protocol", "net", "cli",
           "teacher"]
BELOW["edge"] = LIBRARY
BELOW["server"] = LIBRARY
BELOW["bench"] = LIBRARY
# Inside kernels/: the two backends never include each other.
APART = {"kernels/cpu": ["kernels/cuda"], "kernels/cuda": ["kernels/cpu"],
         "kernels/common": ["kernels/cpu", "kernels/cuda"]}

SOURCE = re.compile(r"\.(h|hpp|cpp|cc|cu|cuh|def)$")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def allowed(src, target):
    """Why `src` (a path relative to the root) may not include `target`, or None."""
    folder = src.split("/")[0]
    if folder not in BELOW:
        return None  # tests/, tools/, third_party/: not constrained
    for part, banned in APART.items():
        if src.startswith(part + "/") and any(target.startswith(b + "/") for b in banned):
            return f"{part}/ never includes {target.split('/')[0]}/{target.split('/')[1]}/"
    if target.startswith(folder + "/"):
        return None
    if any(target.startswith(b + "/") for b in BELOW[folder]):
        return None
    if "/" not in target:
        return None  # a file beside the includer
    return f"{folder}/ may include only " + (", ".join(BELOW[folder]) or "std") + " and itself"


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                           os.path.join(os.path.dirname(__file__), ".."))
    bad = []
    checked = 0
    for folder in BELOW:
        for dirpath, dirnames, files in os.walk(os.path.join(root, folder)):
            dirnames[:] = [d for d in dirnames if not d.startswith("build")]
            for name in sorted(files):
                if not SOURCE.search(name):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                with open(path, encoding="utf-8", errors="replace") as f:
                    for lineno, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        checked += 1
                        why = allowed(rel, m.group(1))
                        if why:
                            bad.append(f"{rel}:{lineno}: #include \"{m.group(1)}\": {why}")
    if checked == 0:
        print(f"check_includes: no project includes found under {root}", file=sys.stderr)
        return 1
    for b in bad:
        print(b)
    print(f"check_includes: {checked} includes checked, {len(bad)} pointing up or sideways")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
