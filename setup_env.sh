#!/usr/bin/env bash
# Make .venv beside this script and install requirements.txt plus any requirement files given as
# arguments. A file is installed again only when its content changed (a stamp per file in .venv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$root/.venv"
stamp_of() { echo "$venv/.installed-$(realpath --relative-to="$root" "$1" | tr '/' '_')"; }
digest_of() { sha256sum "$1" | cut -d' ' -f1; }

[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
files=("$root/requirements.txt" "$@")
install=()
for file in "${files[@]}"; do
  [ "$(cat "$(stamp_of "$file")" 2>/dev/null)" = "$(digest_of "$file")" ] || install+=(-r "$file")
done
if [ ${#install[@]} -gt 0 ]; then
  echo "setup_env.sh: installing ${install[*]} into $venv" >&2
  "$venv/bin/python" -m pip install --disable-pip-version-check -q "${install[@]}"
  for file in "${files[@]}"; do digest_of "$file" > "$(stamp_of "$file")"; done
fi
