#!/usr/bin/env bash
# The GPU check: a CUDA build of llama-server, a 1B-parameter random model, fleets with every layer on the
# GPU, per-instance GPU memory checked against nvidia-smi, and a short sweep with its fleet-gain figure.
# docs/gpu.md says what it measures and how to read the results.
#
#   bash benchmarks/gpu_check.sh --prepare        # here, with network: fill .gpu-carry/ (prints its size)
#   bash benchmarks/gpu_check.sh --dry-run        # here, on the CPU: every step that needs no GPU, tiny sizes
#   OUT=/some/dir bash benchmarks/gpu_check.sh    # on the GPU machine (no network), from the repo root
#
# Options after the mode go to benchmarks/gpu_check.py (e.g. --phases carry,model,fleets,report, --no-carry);
# `python3 benchmarks/gpu_check.py --help` lists them. Environment: PYTHON (the interpreter), GPU_CHECK_CARRY
# (default .gpu-carry), GPU_CHECK_WORK (default .gpu-work on the GPU, a temp dir in a dry run),
# GPU_CHECK_FULL_BUILD=1 (build the FlashAttention kernels too: by estimate a minute or two longer).
set -euo pipefail
T0=$(date +%s)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

MODE=gpu
PASS=()
for arg in "$@"; do
  case "$arg" in
    --prepare) MODE=prepare ;;
    --dry-run) MODE=dry ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) PASS+=("$arg") ;;
  esac
done
CARRY=${GPU_CHECK_CARRY:-$REPO/.gpu-carry}
DEV_PY=python3
[ -x "$REPO/.venv/bin/python" ] && DEV_PY="$REPO/.venv/bin/python"

if [ "$MODE" = prepare ]; then
  PYTHONPATH="$REPO" exec "${PYTHON:-$DEV_PY}" benchmarks/gpu_carry.py --carry "$CARRY" "${PASS[@]+"${PASS[@]}"}"
fi

# ---------------------------------------------------------------------------------------------- the carry
# Unpacked unless the phases leave it out (--phases without carry) or --no-carry says to use this machine's own.
want_carry=1
for arg in "${PASS[@]+"${PASS[@]}"}"; do [ "$arg" = --no-carry ] && want_carry=; done
prev=
for arg in "${PASS[@]+"${PASS[@]}"}"; do
  if [ "$prev" = --phases ] && [[ ",$arg," != *",carry,"* ]]; then want_carry=; fi
  prev=$arg
done

if [ -n "$want_carry" ] && [ ! -f "$CARRY/SHA256SUMS" ]; then
  echo "error: no carry in $CARRY (fix: run bash benchmarks/gpu_check.sh --prepare on a machine with network)" >&2
  exit 2
fi

# The interpreter: the GPU image's python3 there; in a dry run that unpacks the carry, the GPU-like 3.12
# that --prepare made (numpy only, everything else from the carried wheels), else the project's own
# (without the carry the 3.12 has nothing but numpy).
SIM_PY=${GPU_CHECK_SIM:-$HOME/.cache/llama-tui/gpu-check/py312}/bin/python
if [ "$MODE" = gpu ]; then
  PY=${PYTHON:-python3}
  WORK=${GPU_CHECK_WORK:-$REPO/.gpu-work}
  [ -n "${OUT:-}" ] || { echo "error: OUT is not set (fix: OUT=/some/dir bash benchmarks/gpu_check.sh)" >&2; exit 2; }
  MADE_WORK=
else
  if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -n "$want_carry" ] && [ -x "$SIM_PY" ]; then PY=$SIM_PY; else PY=$DEV_PY; fi
  if [ -n "${GPU_CHECK_WORK:-}" ]; then WORK=$GPU_CHECK_WORK; MADE_WORK=; else WORK=$(mktemp -d /tmp/gpu-check.XXXXXX); MADE_WORK=1; fi
  OUT=${OUT:-$WORK/out}
fi
mkdir -p "$WORK" "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
echo "[gpu_check] mode $MODE, python $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])')), work $WORK, out $OUT"

CARRY_ARGS=()
if [ -n "$want_carry" ]; then
  t=$(date +%s)
  (cd "$CARRY" && sha256sum --quiet -c SHA256SUMS) || { echo "error: the carry in $CARRY is damaged (fix: run --prepare again)" >&2; exit 2; }
  # nginx and its libraries, unpacked into a private root (never /), run through a wrapper that puts
  # those libraries first so the binary meets the set it was built against.
  NGINX_ROOT=$WORK/nginx-root
  rm -rf "$NGINX_ROOT" && mkdir -p "$NGINX_ROOT" "$WORK/bin"
  for deb in "$CARRY"/debs/*.deb; do
    if command -v dpkg >/dev/null; then dpkg -x "$deb" "$NGINX_ROOT"
    else (cd "$NGINX_ROOT" && ar p "$deb" "$(ar t "$deb" | grep '^data.tar')" | tar -xJ); fi
  done
  libs=$(find "$NGINX_ROOT" -name '*.so*' -printf '%h\n' | sort -u | paste -sd: -)
  cat >"$WORK/bin/nginx" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$NGINX_ROOT/usr/sbin/nginx" "\$@"
EOF
  chmod +x "$WORK/bin/nginx"
  export NGINX_BIN=$WORK/bin/nginx
  "$NGINX_BIN" -v
  # Wheels for CPython 3.12 x86-64, installed as they are (no index, no dependency resolution).
  rm -rf "$WORK/site"
  plat=()
  while read -r tag; do plat+=(--platform "$tag"); done <"$CARRY/PLATFORMS"
  "$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
    --python-version 3.12 --implementation cp --only-binary=:all: "${plat[@]}" \
    --target "$WORK/site" "$CARRY"/wheels/*.whl
  CARRY_ARGS=(--carry-seconds $(( $(date +%s) - t )))
  echo "[gpu_check] carry unpacked in ${CARRY_ARGS[1]}s: nginx at $NGINX_BIN, $(ls "$CARRY"/wheels | wc -l) wheels in $WORK/site"
  # Only an interpreter of the wheels' version imports them; another one (a dry run without a
  # Python 3.12) has checked that they install and runs on its own packages.
  if "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    export PYTHONPATH="$REPO:$WORK/site"
  else
    echo "[gpu_check] $PY is not Python 3.12: the wheels were checked, its own packages are used"
    export PYTHONPATH="$REPO"
  fi
else
  export PYTHONPATH="$REPO"
fi

export PYTHONUNBUFFERED=1
rc=0
"$PY" benchmarks/gpu_check.py --mode "$MODE" --work "$WORK" --out "$OUT" --carry "$CARRY" --t0 "$T0" \
  --command "$(env | grep -E '^GPU_CHECK_[A-Z_]+=' | tr '\n' ' ')bash benchmarks/gpu_check.sh $*" \
  "${CARRY_ARGS[@]+"${CARRY_ARGS[@]}"}" "${PASS[@]+"${PASS[@]}"}" || rc=$?
# A dry run's own temp dir: once it passed, only the results stay.
if [ -n "$MADE_WORK" ] && [ "$rc" = 0 ]; then
  if [ "$OUT" = "$WORK/out" ]; then find "$WORK" -mindepth 1 -maxdepth 1 ! -name out -exec rm -rf {} +; else rm -rf "$WORK"; fi
fi
echo "[gpu_check] done in $(( $(date +%s) - T0 ))s, exit $rc; results in $OUT"
exit "$rc"
