#!/usr/bin/env bash
# The study: six runs, one after another, into runs/study/<name>; then the report into reports/study.
#
#   scripts/run_study.sh [--extended] [--config.KEY=VALUE ...]
#
# --extended trains the extended study's configs (configs/ext_*.py) instead of the six, so a finished
# study can add them, then reports on those and on every one of the six present in STUDY_DIR.
# Extra arguments go to every run (e.g. --config.data.data_dir=/data/tfds). Rerun the same command
# to resume: each run continues from its latest checkpoint, and a finished run exits at once.
# STUDY_DIR and REPORT_DIR change where the runs and the report go.
set -euo pipefail
cd "$(dirname "$0")/.."

STUDY_DIR="${STUDY_DIR:-runs/study}"
REPORT_DIR="${REPORT_DIR:-reports/study}"
STUDY=(linear_mse linear_mae cosine_mse sigmoid_mse cosine_mae sigmoid_mae)
EXTENDED=(ext_cosine_v ext_cosine_v_min_snr ext_linear_zero_snr_v ext_linear_offset ext_cosine_mae_offset)

extended=0
overrides=()
for arg in "$@"; do
  if [[ "${arg}" == --extended ]]; then extended=1; else overrides+=("${arg}"); fi
done

# Bash runs a trap once the run in the foreground has exited, so Ctrl-C or a SIGTERM lets the
# trainer save its checkpoint and then stops the study instead of starting the next run.
trap 'echo "run_study: interrupted; run the same command again to resume." >&2; exit 130' INT TERM

workdirs=()
if (( extended )); then
  configs=("${EXTENDED[@]}")
  # The six that were trained: the report compares the extended runs with their base runs.
  for name in "${STUDY[@]}"; do
    if [[ -f "${STUDY_DIR}/${name}/config.json" ]]; then workdirs+=("${STUDY_DIR}/${name}"); fi
  done
else
  configs=("${STUDY[@]}")
fi
for name in "${configs[@]}"; do
  echo "run_study: ${name} → ${STUDY_DIR}/${name}"
  # ${overrides[@]+...}: bash before 4.4 calls an empty array unbound under set -u.
  python -m ddpm_jax.main --config="configs/${name}.py" --workdir="${STUDY_DIR}/${name}" \
    ${overrides[@]+"${overrides[@]}"}
  workdirs+=("${STUDY_DIR}/${name}")
done
python -m ddpm_jax.report --workdirs "${workdirs[@]}" --out "${REPORT_DIR}"
