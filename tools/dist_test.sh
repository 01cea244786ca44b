#!/usr/bin/env bash
# Distributed testing with torchrun (PyTorch's launcher): each process
# evaluates a share of the test set, rank 0 gathers the results and prints
# the metric.
#   bash tools/dist_test.sh CONFIG CHECKPOINT PROCS [test.py args...]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT (see tools/dist_env.sh).
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
PROCS=$3
source "$(dirname "$0")/dist_env.sh"
launch "$PROCS" "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"
