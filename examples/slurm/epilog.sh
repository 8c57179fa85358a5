#!/bin/sh
# Slurm Epilog for nodes that run dataref jobs (slurm.conf: Epilog=/etc/slurm/epilog.d/dataref.sh).
# Runs as root on the node after every job. A job's agent that was SIGKILLed (KillWait ran
# out, node trouble) leaves a dead FUSE mount ("Transport endpoint is not connected") that
# would break the next job using the same path; `dataref cleanup` removes only dead dataref
# mounts and leaves other jobs' live mounts alone.
#
# A non-zero exit makes Slurm drain the node: a dead mount that cannot be removed needs an
# administrator before the node takes more jobs.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
DATAREF=${DATAREF:-dataref}

out=$("$DATAREF" cleanup 2>&1)
rc=$?
# Slurm keeps no epilog output: leave a trace in syslog when there is one.
logger -t dataref-epilog "job ${SLURM_JOB_ID:-?}: $out (exit $rc)" 2>/dev/null || true
echo "dataref-epilog: job ${SLURM_JOB_ID:-?}: $out (exit $rc)"
exit "$rc"
