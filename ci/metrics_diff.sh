#!/usr/bin/env bash
# Rerun the tiny CI configuration (ci/tiny/params.yaml) through DVC in a throw-away clone, print
# `dvc metrics diff --md` against the committed baseline (ci/tiny/baseline), and fail on a pipeline error
# or on a metric beyond the tolerances of ci/check_metrics.py.
#   ci/metrics_diff.sh              # check
#   ci/metrics_diff.sh --update     # rerun and overwrite the committed baseline (after a deliberate change)
set -euo pipefail
repo=$(git rev-parse --show-toplevel)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1   # fixed float summation order: reproducible tiny-model metrics
export CUDA_VISIBLE_DEVICES=                 # on a GPU machine too: the baseline is a CPU run
: "${MEMQA_EQ_SOURCE:?set MEMQA_EQ_SOURCE to a local EntityQuestions copy}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/repo"
cd "$work/repo"
cp ci/tiny/params.yaml params.yaml
python ci/make_tiny_model.py data/tiny-model
rm -rf metrics plots REPORT.md
mkdir -p metrics && if [[ -d ci/tiny/baseline ]]; then cp -r ci/tiny/baseline/. metrics/; fi
git add -A
git -c user.name=ci -c user.email=ci@localhost commit -qm "CI: tiny configuration and its baseline metrics"
dvc exp run --quiet
echo "## Metrics diff: tiny CI configuration vs committed baseline"
dvc metrics diff --md --all HEAD
if [[ "${1:-}" == "--update" ]]; then
  rm -rf "$repo/ci/tiny/baseline" && mkdir -p "$repo/ci/tiny/baseline"
  (cd metrics && find . -name '*.json' -exec cp --parents {} "$repo/ci/tiny/baseline/" \;)
  echo "baseline updated in ci/tiny/baseline"
else
  python "$repo/ci/check_metrics.py" "$repo/ci/tiny/baseline" metrics
fi
