#!/usr/bin/env bash
# buf breaking: the contract in protos/ against the previous commit's (BUF_AGAINST_REF, default HEAD~1:
# in CI's fresh clone of main, the main before this change). The previous tree is taken with git archive,
# so it works the same in a clone, a worktree or a CI checkout; with no previous commit at hand (the first
# commit, or a shallow clone) it says so and passes, since there is nothing to compare against.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF="${BUF:-node_modules/.bin/buf}"
REF="${BUF_AGAINST_REF:-HEAD~1}"

if ! git rev-parse --git-dir >/dev/null 2>&1; then
  echo "buf breaking: skipped (not a git checkout)"
  exit 0
fi
if ! git rev-parse --verify --quiet "${REF}^{commit}" >/dev/null; then
  if [ "$(git rev-parse --is-shallow-repository 2>/dev/null)" = "true" ]; then
    echo "buf breaking: skipped (shallow clone: ${REF} is not here; fetch more history to compare)"
  else
    echo "buf breaking: skipped (${REF} does not exist: nothing to compare against)"
  fi
  exit 0
fi
if ! git cat-file -e "${REF}:buf.yaml" 2>/dev/null; then
  echo "buf breaking: skipped (${REF} has no buf.yaml)"
  exit 0
fi

previous="$(mktemp -d)"
trap 'rm -rf "$previous"' EXIT
git archive "$REF" buf.yaml protos | tar -x -C "$previous"
echo "buf breaking: protos/ against $(git rev-parse --short "$REF")"
"$BUF" breaking --against "$previous"
