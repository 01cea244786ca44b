#!/usr/bin/env bash
# Distributed training with torchrun (PyTorch's launcher) and DDP.
#   bash tools/dist_train.sh CONFIG PROCS [train.py args...]
# PROCS processes per node: one per GPU on a CUDA machine (nccl); on a
# machine without CUDA, CPU processes (gloo; SyncBN runs as BN).
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT (see tools/dist_env.sh).
set -euo pipefail
CONFIG=$1
PROCS=$2
source "$(dirname "$0")/dist_env.sh"
launch "$PROCS" "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "${@:3}"
