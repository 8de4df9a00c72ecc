# Sourced by the launchers: run_xmtf CMD... prints CMD when DRY_RUN=1, else installs (once,
# stamp-based) and execs it with TensorFlow's C++ logging quiet.
run_xmtf() {
  if [ "${DRY_RUN:-0}" = "1" ]; then
    printf '%q ' "$@"; echo
    exit 0
  fi
  bash "$ROOT/scripts/install.sh"
  export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
  exec "$@"
}
