# Sourced by the scripts that run pinned Python packages against the server.
#
# pinned_venv VENV PIN...: makes VENV a virtual environment holding exactly PIN... (recorded in
# VENV/.pins; rebuilt when the pins change), installing python3-venv with apt-get when python3 has
# no venv module. Returns 1, with VENV removed, when pip cannot install the pins (no PyPI).
pinned_venv() {
  local venv="$1"; shift
  local stamp="$venv/.pins"
  if [[ -x "$venv/bin/python" ]] && [[ "$(cat "$stamp" 2>/dev/null)" == "$*" ]]; then return 0; fi
  rm -rf "$venv"
  python3 -m venv "$venv" 2>/dev/null || {
    local sudo=""; [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
    $sudo apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$venv"
  }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" || { rm -rf "$venv"; return 1; }
  echo "$*" >"$stamp"
}
