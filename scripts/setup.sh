#!/usr/bin/env bash
# Install geoadapt and everything it needs into ./.venv (idempotent; safe to run again).
#
# mmcv 2.1.0 with compiled ops comes from a wheelhouse when one is given (GEOADAPT_WHEELHOUSE, or
# ../shared/wheels when present); otherwise it is built from source (~20 minutes on 2 cores).
# GPU users: install the CUDA build of torch 2.13.0 into .venv first, then run this with
# GEOADAPT_BUILD_MMCV=1 FORCE_CUDA=1 (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade "pip<26" wheel

# torch first and exactly pinned: an unpinned requirement would pull a multi-GB CUDA build.
"${PIP[@]}" install -q -c constraints.txt "torch==2.13.0"

if ! .venv/bin/python -c "import mmcv.ops" 2>/dev/null; then
    wheelhouse=${GEOADAPT_WHEELHOUSE:-}
    if [ -z "$wheelhouse" ] && [ -d ../shared/wheels ]; then wheelhouse=../shared/wheels; fi
    # GEOADAPT_BUILD_MMCV=1 forces the source build (e.g. CUDA ops against a CUDA torch)
    if [ "${GEOADAPT_BUILD_MMCV:-0}" = 1 ]; then wheelhouse=""; fi
    if [ -n "$wheelhouse" ] && ls "$wheelhouse"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
        echo "mmcv: installing the prebuilt wheel from $wheelhouse"
        "${PIP[@]}" install -q -c constraints.txt --find-links "$wheelhouse" "mmcv==2.1.0"
    else
        echo "mmcv: no wheelhouse with mmcv 2.1.0; building it from source (about 20 minutes on 2 cores)"
        "${PIP[@]}" install -q -c constraints.txt "setuptools<70" ninja
        MMCV_WITH_OPS=1 "${PIP[@]}" install -q -c constraints.txt --no-build-isolation "mmcv==2.1.0"
        # the old setuptools was for mmcv's build only; torch 2.13 requires a newer one
        "${PIP[@]}" install -q -c constraints.txt "setuptools>=77.0.3"
    fi
fi

"${PIP[@]}" install -q -c constraints.txt -e ".[ml,test,browser,bench]"
.venv/bin/python -c "import mmcv.ops, mmseg, rasterio, torch; print(f'geoadapt installed: torch {torch.__version__}, mmcv {mmcv.__version__}, mmseg {mmseg.__version__}, rasterio {rasterio.__version__}')"

# The web console: Leaflet from the npm registry, copied into service/console/static/vendor by
# `npm run build` and served by the console itself (no CDN at run time). Without npm the console
# still serves, with a banner saying the map library is missing. Playwright (Python) drives the
# system's Chromium in the console's browser tests; it never downloads a browser.
"${PIP[@]}" install -q -c constraints.txt -e ".[browser]"
if command -v npm >/dev/null 2>&1; then
    { npm ci --no-audit --no-fund --loglevel=error && npm run --silent build; } \
        || echo "console: npm ci / npm run build failed; the console will serve without its map library"
else
    echo "console: npm not found; the console will serve without its map library (install Node.js + npm, run this again)"
fi
