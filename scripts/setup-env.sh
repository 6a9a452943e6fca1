#!/usr/bin/env bash
# Create or update one of the project's Python environments, idempotently.
#   scripts/setup-env.sh app     -> .venv          (requirements.txt [+ requirements-gpu.txt on GPU])
#   scripts/setup-env.sh dev     -> .venv          (app + requirements-dev.txt [+ -nodeps.txt on CPU])
#   scripts/setup-env.sh train   -> .venvs/train   (pipeline/envs/train.txt, XTuner)
#   scripts/setup-env.sh eval    -> .venvs/eval    (pipeline/envs/eval.txt, OpenCompass)
# On a machine where nvidia-smi sees a GPU, requirements-gpu.txt / pipeline/envs/NAME-gpu.txt
# are installed first (LMDeploy and the torch it pins); elsewhere torch 2.13.0's CPU build is.
# A stamp file holds the hash of every input; a second run with nothing changed takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: scripts/setup-env.sh app|dev|train|eval}"
PY="${PYTHON:-python3}"
has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
case "$name" in
  app|dev)
    venv=.venv
    reqs=()
    if has_gpu; then reqs+=(requirements-gpu.txt); fi
    reqs+=(requirements.txt)
    nodeps=() ; post=()
    if [ "$name" = dev ]; then
      reqs+=(requirements-dev.txt)
      # LMDeploy's Python code for the contract tests (on a GPU it came with requirements-gpu.txt)
      has_gpu || nodeps=(requirements-dev-nodeps.txt)
    fi ;;
  train|eval)
    venv=.venvs/$name
    reqs=()
    if has_gpu && [ -f pipeline/envs/$name-gpu.txt ]; then reqs+=(pipeline/envs/$name-gpu.txt); fi
    reqs+=(pipeline/envs/$name.txt)
    nodeps=(); [ -f pipeline/envs/$name-nodeps.txt ] && nodeps=(pipeline/envs/$name-nodeps.txt)
    post=(); [ -f pipeline/envs/${name}_post.py ] && post=(pipeline/envs/${name}_post.py) ;;
  *) echo "unknown environment '$name' (app, dev, train, eval)" >&2; exit 2 ;;
esac
stamp="$venv/.setup-stamp-$name"
want=$(cat "$0" "${reqs[@]}" ${nodeps[@]+"${nodeps[@]}"} ${post[@]+"${post[@]}"} | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  echo "[setup] $name environment up to date ($venv)"; exit 0
fi
echo "[setup] building $name environment in $venv"
start=$(date +%s)
[ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input)
"${pip[@]}" install -q --upgrade pip >/dev/null
if ! has_gpu; then
  # torch first, pinned to the CPU build, so nothing below can pull a CUDA build in.
  "${pip[@]}" install -q torch==2.13.0
fi
for r in "${reqs[@]}"; do "${pip[@]}" install -q -r "$r"; done
for r in ${nodeps[@]+"${nodeps[@]}"}; do "${pip[@]}" install -q --no-deps -r "$r"; done
for p in ${post[@]+"${post[@]}"}; do "$venv/bin/python" "$p"; done
echo "$want" > "$stamp"
echo "[setup] $name environment ready in $(( $(date +%s) - start ))s"
