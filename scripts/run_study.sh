#!/usr/bin/env bash
# The study: six runs, one after another, into runs/study/<name>; then the report into reports/study.
#
#   scripts/run_study.sh [--config.KEY=VALUE ...]
#
# Extra arguments go to every run (e.g. --config.data.data_dir=/data/tfds). Rerun the same command
# to resume: each run continues from its latest checkpoint, and a finished run exits at once.
# STUDY_DIR and REPORT_DIR change where the runs and the report go.
set -euo pipefail
cd "$(dirname "$0")/.."

STUDY_DIR="${STUDY_DIR:-runs/study}"
REPORT_DIR="${REPORT_DIR:-reports/study}"
CONFIGS=(linear_mse linear_mae cosine_mse sigmoid_mse cosine_mae sigmoid_mae)

# Bash runs a trap once the run in the foreground has exited, so Ctrl-C or a SIGTERM lets the
# trainer save its checkpoint and then stops the study instead of starting the next run.
trap 'echo "run_study: interrupted; run the same command again to resume." >&2; exit 130' INT TERM

workdirs=()
for name in "${CONFIGS[@]}"; do
  echo "run_study: ${name} → ${STUDY_DIR}/${name}"
  python -m ddpm_jax.main --config="configs/${name}.py" --workdir="${STUDY_DIR}/${name}" "$@"
  workdirs+=("${STUDY_DIR}/${name}")
done
python -m ddpm_jax.report --workdirs "${workdirs[@]}" --out "${REPORT_DIR}"
