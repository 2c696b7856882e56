#!/usr/bin/env bash
# Run the test suite (starts Redis/PostgreSQL first when they are down). Extra args go to pytest.
set -u
cd "$(dirname "$0")/.."
bash scripts/services.sh
.venv/bin/python -m pytest "$@"
rc=$?
# pytest exits 5 when it collected no tests: for us that is a failure, not a pass.
if [ $rc -eq 5 ]; then echo "no tests were collected: failing"; exit 1; fi
exit $rc
