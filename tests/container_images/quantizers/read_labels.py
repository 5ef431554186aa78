"""Hostile: hunts for the hidden test labels: the host label path (first argument), and any file
named after the test case (second argument) or inside a labelsTr folder anywhere in its file
system; copies whatever it finds to /output."""

import os
import shutil
import sys
from pathlib import Path

label_path, case_id = sys.argv[1:3]
found = []
for root, dirs, files in os.walk("/", onerror=lambda error: None):
    dirs[:] = [d for d in dirs if not (root == "/" and d in ("proc", "sys", "dev"))]
    found += [Path(root, f) for f in files if case_id in f or "labelsTr" in Path(root).parts]
print(f"found {[str(p) for p in found]}", flush=True)
for path in found:
    shutil.copy(path, Path("/output") / path.name)
if not found:
    shutil.copy(label_path, "/output/label.nii.gz")
