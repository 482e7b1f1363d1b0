# The CANN environment for Ascend NPUs (sourced by the launch scripts on an Ascend machine only;
# see test/launch_train.sh). The settings are the Ascend port's; each can be overridden by
# exporting it before the launch.

# Where CANN is installed: the installer records it, else the default location.
CANN_INSTALL_PATH=/usr/local/Ascend
if [[ -f /etc/Ascend/ascend_cann_install.info ]]; then
    recorded=$(sed -n 's/^Install_Path=//p' /etc/Ascend/ascend_cann_install.info)
    CANN_INSTALL_PATH=${recorded:-$CANN_INSTALL_PATH}
fi
# CANN's own scripts read variables that may be unset.
set +u
if [[ -d "${CANN_INSTALL_PATH}/ascend-toolkit/latest" ]]; then
    source "${CANN_INSTALL_PATH}/ascend-toolkit/set_env.sh"
else
    source "${CANN_INSTALL_PATH}/nnae/set_env.sh"
fi
set -u

# Device logs: errors only, no event logs (needs msnpureport, part of the driver tools).
if command -v msnpureport >/dev/null; then
    for device_id in 0 1 2 3 4 5 6 7; do
        msnpureport -g error -d "$device_id" >/dev/null 2>&1 || true
    done
    msnpureport -e disable >/dev/null 2>&1 || true
fi

export ASCEND_SLOG_PRINT_TO_STDOUT=${ASCEND_SLOG_PRINT_TO_STDOUT:-0}
export ASCEND_GLOBAL_LOG_LEVEL=${ASCEND_GLOBAL_LOG_LEVEL:-3}
export ASCEND_GLOBAL_EVENT_ENABLE=${ASCEND_GLOBAL_EVENT_ENABLE:-0}
export TASK_QUEUE_ENABLE=${TASK_QUEUE_ENABLE:-1}
export PTCOPY_ENABLE=${PTCOPY_ENABLE:-1}
export COMBINED_ENABLE=${COMBINED_ENABLE:-1}
export DYNAMIC_OP=${DYNAMIC_OP:-"ADD#MUL"}
export HCCL_WHITELIST_DISABLE=${HCCL_WHITELIST_DISABLE:-1}

# Many open files (data loader workers, shards); not fatal where the limit cannot be raised.
ulimit -SHn 512000 2>/dev/null || echo "env_npu.sh: could not raise the open-file limit (ulimit -n $(ulimit -n))"

# torch's own libraries first, for the interpreter that will run the training.
torch_lib=$("${PYTHON:-python}" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="${torch_lib}${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
echo "env_npu.sh: CANN at ${CANN_INSTALL_PATH}; LD_LIBRARY_PATH=${LD_LIBRARY_PATH}"
