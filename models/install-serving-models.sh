#!/usr/bin/env bash
# Copies what `inferd serve` needs to serve the bundled models into DEST: models/default.toml
# and the files and folders its [[models]] paths name, nothing else (not the tests' files, not
# the reference scripts). The images' build runs it; run models/fetch-models.sh first.
#
#   bash models/install-serving-models.sh DEST
set -euo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: install-serving-models.sh DEST" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"${PYTHON:-python3}" - "$here" "$1" <<'PY'
import os, shutil, sys, tomllib

models, dest = sys.argv[1:]
config = os.path.join(models, "default.toml")
with open(config, "rb") as f:
    entries = tomllib.load(f).get("models", [])
os.makedirs(dest, exist_ok=True)
shutil.copy2(config, os.path.join(dest, "default.toml"))
copied = set()
for entry in entries:
    # A path relative to default.toml: the first component is the model's folder.
    first = entry["path"].split("/")[0]
    source = os.path.join(models, first)
    if first in copied or entry["path"].startswith("hf:"):
        continue
    if not os.path.exists(source):
        sys.exit(f"install-serving-models.sh: {source} is missing; run models/fetch-models.sh first")
    target = os.path.join(dest, first)
    if os.path.isdir(source):
        # The fetch markers and .gitignore files are not the model's.
        shutil.copytree(source, target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".gitignore", ".inferd-fetched"))
    else:
        shutil.copy2(source, target)
    copied.add(first)
print(f"install-serving-models.sh: {len(entries)} models ({len(copied)} folders) in {dest}")
PY
