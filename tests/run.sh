#!/usr/bin/env bash
# The test command: make .venv (first time), install the requirements, install Label Studio into
# .label_studio/ (a virtualenv of its own, for tests/test_label_studio.py), run pytest.
# Extra arguments go to pytest, e.g. bash tests/run.sh -k evaluate. Two workers (pytest-xdist), one
# test file to a worker at a time: most tests spend their time in one core's Python, so two halve the
# suite's time on 2 cores; -n 0 runs them in one process.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/setup_env.sh" "$root/tests/requirements.txt"
cd "$root"
requirements=tests/label_studio_requirements.txt
digest="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ "$(cat .label_studio/.installed 2>/dev/null)" != "$digest" ]; then
  echo "tests/run.sh: installing $requirements into .label_studio/ (a few minutes the first time)" >&2
  rm -rf .label_studio
  "${PYTHON:-python3}" -m venv .label_studio
  .label_studio/bin/python -m pip install --disable-pip-version-check -q -r "$requirements"
  echo "$digest" > .label_studio/.installed
fi
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations 15 tests "$@"
