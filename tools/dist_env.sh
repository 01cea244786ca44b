# Sourced by tools/dist_train.sh and tools/dist_test.sh: the Python to run
# and the torchrun settings shared by both.
#   NNODES, NODE_RANK, MASTER_ADDR, PORT: multi-node torchrun (defaults: one
#   node, 127.0.0.1:29500). Run the same command on every node with its
#   NODE_RANK (0 .. NNODES-1) and node 0's address as MASTER_ADDR.
#   PYTHON: the interpreter (default: the repo's .venv, else python).
#   OMP_NUM_THREADS: threads per process. torchrun sets 1; on a machine
#   without CUDA each process gets cores / processes instead (at least 1),
#   so the processes share the cores without oversubscribing them.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
# launch PROCS SCRIPT ARGS...: torchrun SCRIPT with PROCS processes per node
launch() {
    local procs=$1
    shift
    if [ -z "${OMP_NUM_THREADS:-}" ] && ! "$PYTHON" -c \
            'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
        local threads=$(( $(nproc) / procs ))
        export OMP_NUM_THREADS=$(( threads > 0 ? threads : 1 ))
    fi
    PYTHONPATH="$ROOT:${PYTHONPATH:-}" \
    "$PYTHON" -m torch.distributed.run \
        --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
        --nproc_per_node="$procs" --master_port="$PORT" \
        "$@"
}
