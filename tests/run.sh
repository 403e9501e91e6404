#!/usr/bin/env bash
# The test command: make .venv (first time), install the requirements, run pytest.
# Extra arguments go to pytest, e.g. bash tests/run.sh -k evaluate
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/setup_env.sh" "$root/tests/requirements.txt"
cd "$root"
exec .venv/bin/python -m pytest -q tests "$@"
