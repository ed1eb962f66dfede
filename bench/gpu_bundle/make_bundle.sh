#!/usr/bin/env bash
# A small offline wheel bundle for a GPU box that already has CUDA torch + transformers, so that
# `python bench/gpu_check.py` runs there with no network. Run this on a machine WITH network, from
# anywhere in the repository:
#
#   bench/gpu_bundle/make_bundle.sh [OUT]          # default OUT: .whl/gpu-bundle (ignored by git)
#
# Environment:
#   VENV      the virtualenv whose versions are pinned (default: .ci-venv of this repository)
#   PY        the GPU box's Python version, e.g. 3.10 (default: the venv's)
#   PLATFORM  wheel platform tags the GPU box takes, space-separated (default: x86_64 manylinux up to glibc 2.28)
#   HAVE      a file with `pip freeze` of the GPU box: packages it already has are left out of the bundle
#   NO_DOWNLOAD=1  write pins.txt and the ftui wheel only (no network needed), to check the pins
#
# What goes in: this project as a wheel; the packages bench/gpu_check.py and the training runs need
# beyond torch + transformers (peft, accelerate, bitsandbytes, datasets, nvidia-ml-py, pyyaml, rich,
# textual) and their dependencies, at the versions installed in VENV, each `pip download --no-deps`.
# Left out: torch and what it depends on, transformers with tokenizers, safetensors, huggingface-hub,
# numpy, packaging, regex and requests (the box has them), deepspeed (the GPU check runs no ZeRO case),
# and with HAVE everything else the box already has.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${1:-$ROOT/.whl/gpu-bundle}
VENV=${VENV:-$ROOT/.ci-venv}
PYBIN=$VENV/bin/python
PY=${PY:-$("$PYBIN" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
PLATFORM=${PLATFORM:-manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64}
TOP="peft accelerate bitsandbytes datasets nvidia-ml-py pyyaml rich textual"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# 1. Pins: TOP and their dependency closure at VENV's versions, minus torch's closure and transformers' core
#    bring (and minus HAVE). TOP itself is always pinned: pip skips what the box already satisfies.
"$PYBIN" - "$OUT/pins.txt" "${HAVE:-}" $TOP <<'PY'
import re
import sys
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement

out, have_file, top = sys.argv[1], sys.argv[2], sys.argv[3:]


def key(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def deps(name, extras=()):
    """The installed distribution and the names it requires (with the requirements of `extras`)."""
    try:
        dist = distribution(name)
    except PackageNotFoundError:
        return None, []
    names = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
            names.append((req.name, tuple(req.extras)))
    return dist, names


def closure(roots, stop=()):
    found, seen, todo = {}, set(), [(r, ()) for r in roots]
    while todo:
        name, extras = todo.pop()
        k = key(name)
        if k in stop or (k, extras) in seen:
            continue
        seen.add((k, extras))
        dist, names = deps(name, extras)
        if dist is None:
            continue
        found[k] = (dist.metadata["Name"], dist.version)
        todo += names
    return found


# On the GPU box already: torch (built for its CUDA) and what it depends on, transformers and the
# packages every transformers release needs. More is left out only with HAVE: an extra wheel costs
# bundle size, a missing one fails the offline install.
provided = set(closure(["torch"])) | {"torch", "triton", "deepspeed"}
provided |= {"transformers", "tokenizers", "safetensors", "huggingface-hub", "numpy", "packaging", "regex", "requests"}
if have_file:
    with open(have_file) as fh:
        provided |= {key(re.split(r"[=<>@ ;]", line.strip(), maxsplit=1)[0]) for line in fh if line.strip()}
wanted = closure(top, stop=provided - {key(t) for t in top})
missing = [t for t in top if key(t) not in wanted]
if missing:
    sys.exit(f"not installed in the venv: {' '.join(missing)}")
cuda_libs = [k for k in wanted if k.startswith("nvidia-") and k != "nvidia-ml-py"]
pins = sorted(f"{name}=={version}" for k, (name, version) in wanted.items() if k not in cuda_libs)
with open(out, "w") as fh:
    fh.write("\n".join(pins) + "\n")
print(f"{len(pins)} pinned packages -> {out}")
PY

# 2. This project as a wheel, built from a copy of the working tree (tracked and untracked, not
#    ignored), so nothing is written into the checkout.
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$SRC" 2>/dev/null || true)
"$PYBIN" -m pip wheel --quiet --no-deps --no-build-isolation -w "$OUT" "$SRC" 2>"$SRC.log" || {
    cat "$SRC.log" >&2
    exit 1
}
rm -f "$SRC.log"

# 3. The pinned wheels for the GPU box's Python and platform (binary wheels only, no dependencies).
if [ "${NO_DOWNLOAD:-}" != "1" ]; then
    PLATFORMS=()
    for tag in $PLATFORM; do PLATFORMS+=(--platform "$tag"); done
    "$PYBIN" -m pip download --no-deps --only-binary=:all: --implementation cp --python-version "$PY" \
        "${PLATFORMS[@]}" -d "$OUT" -r "$OUT/pins.txt"
fi

# 4. What the GPU box installs: unpinned names, so whatever it has that satisfies them is kept.
printf '%s\n' ftui $TOP > "$OUT/requirements.txt"
REL=${OUT#"$ROOT"/}
echo "bundle: $OUT ($(du -sh "$OUT" | cut -f1))"
echo "on the GPU box, from the repository root:"
echo "  python -m pip install --no-index --find-links $REL -r $REL/requirements.txt && python bench/gpu_check.py"
