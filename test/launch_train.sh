# Shared by pretrain_gpt_4p.sh and finetune_gpt_1p.sh (sourced, not run): launch train.py under
# torchrun with the knobs below, tee the console to a log file, then print a summary line.
#
# Every knob is an environment variable; the calling script sets its own defaults first, and
# DEFAULT_CONFIG and DEFAULT_OPTIONS (the Ascend port's settings); the log file takes its name.
#   GPUS_PER_NODE  processes (devices) per node        NNODES       nodes
#   NODE_RANK      this node's rank (0 .. NNODES-1)    MASTER_ADDR  node 0's address
#   MASTER_PORT    node 0's rendezvous port            CONFIG       the YAML config
#   OPTIONS        run overrides passed as --options; default: DEFAULT_OPTIONS with the default
#                  CONFIG, none with any other (a tiny config trains as its YAML says)
#   DEVICE         run.device (cuda, npu, cpu, auto)
#   PYTHON         the interpreter (default: .venv/bin/python if present, else python)
#   LOG_DIR        where the log file goes (output/logs); LOG_FILE names it outright
#   ASCEND         1: source test/env_npu.sh; 0: do not; auto (default): when CANN is installed
# Arguments given to the calling script are appended to OPTIONS (key=value ...).

cd "$(dirname "${BASH_SOURCE[0]}")/.."

: "${CONFIG:=$DEFAULT_CONFIG}"
# The Ascend port's settings are meant for the full-size config.
if [[ "$CONFIG" == "$DEFAULT_CONFIG" ]]; then : "${OPTIONS=$DEFAULT_OPTIONS}"; fi
: "${OPTIONS=}"
: "${NNODES:=1}" "${NODE_RANK:=0}" "${MASTER_ADDR:=localhost}" "${DEVICE:=auto}" "${ASCEND:=auto}"
: "${LOG_DIR:=output/logs}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
NAME=$(basename "$0" .sh)
: "${LOG_FILE:=${LOG_DIR}/${NAME}_$(date +%Y%m%d_%H%M%S)_node${NODE_RANK}.log}"

if [[ "$ASCEND" == auto ]]; then
    if [[ -f /etc/Ascend/ascend_cann_install.info || -d /usr/local/Ascend/ascend-toolkit ]]; then ASCEND=1; else ASCEND=0; fi
fi
if [[ "$ASCEND" == 1 ]]; then
    source test/env_npu.sh
    export HCCL_CONNECT_TIMEOUT="${HCCL_CONNECT_TIMEOUT:-6000}"
fi

mkdir -p "$(dirname "$LOG_FILE")"
read -r -a option_words <<< "$OPTIONS"
command=(
    "$PYTHON" -m torch.distributed.run
    --nproc-per-node "$GPUS_PER_NODE" --nnodes "$NNODES" --node-rank "$NODE_RANK"
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"
    train.py --cfg-path "$CONFIG" --options "${option_words[@]}" "run.device=$DEVICE" "$@"
)
echo "launch: ${command[*]}" | tee "$LOG_FILE"
start=$(date +%s)
"${command[@]}" 2>&1 | tee -a "$LOG_FILE"
elapsed=$(( $(date +%s) - start ))

# The step lines come from rank 0 (node 0); the first one includes start-up and is left out of
# the means when there are others.
{ grep -o 'train: step=.*' "$LOG_FILE" || true; } | awk -v log_file="$LOG_FILE" -v elapsed="$elapsed" -v node="$NODE_RANK" '
    {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); value[kv[1]] = kv[2] }
        n++
        if (n == 1) { first_tok = value["TokensPerSec"]; first_sps = value["samples/s"]; first_st = value["step_time"]; next }
        tok += value["TokensPerSec"]; sps += value["samples/s"]; st += value["step_time"]; m++
        loss = value["loss"]; step = value["step"]
    }
    END {
        if (n == 0) {
            if (node != 0) { printf "summary: node %s logs no step lines (rank 0 on node 0 does); log %s\n", node, log_file; exit 0 }
            printf "summary: no step lines in %s\n", log_file; exit 1
        }
        if (m == 0) { tok = first_tok; sps = first_sps; st = first_st; m = 1; loss = value["loss"]; step = value["step"] }
        printf "summary: TokensPerSec=%.1f samples/s=%.2f step_time=%.4f loss=%s step=%s wall=%ss log=%s\n", \
            tok / m, sps / m, st / m, loss, step, elapsed, log_file
    }' | tee -a "$LOG_FILE"
