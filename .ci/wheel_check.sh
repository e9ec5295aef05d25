#!/usr/bin/env bash
# The package as a user installs it: build the wheel, install it (not editable) in a fresh virtual
# environment, and run a tiny evaluation of a shipped bundle from outside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
data="${MONAI_SMIA_DATA:-$repo/../shared/data}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q torch==2.13.0
"$work/venv/bin/pip" wheel -q --no-deps -w "$work/dist" "$repo"
"$work/venv/bin/pip" install -q "$work"/dist/monai_smia-*.whl
cd "$work"
if [ ! -d "$data/digits/mnist" ]; then
    echo "wheel check: $data/digits/mnist is absent; checked only that the installed package imports and lists its bundles"
    "$work/venv/bin/python" -c "from monai_smia.bundle.victim import builtin_bundles; b = builtin_bundles(); assert 'mnist_cls' in b, b; print(b)"
    exit 0
fi
"$work/venv/bin/python" -m monai_smia.apps.data_prep.mnist --data-dir "$data" --out "$work/mnist" > /dev/null
"$work/venv/bin/monai-smia" evaluate --bundle mnist_cls --dataset-dir "$work/mnist" --output "$work/eval" \
    --attacks FGSM SMIA --num-iter 2 --max-cases 8 --device cpu > "$work/eval.log" 2>&1 || { cat "$work/eval.log"; exit 1; }
"$work/venv/bin/python" - "$work/eval/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
assert list(s) == ["clean", "FGSM", "SMIA"] and s["clean"]["num_cases"] == 8, s
print("wheel check: installed monai-smia evaluated mnist_cls from outside the checkout:",
      {k: round(v["top1"], 3) for k, v in s.items()})
PY
