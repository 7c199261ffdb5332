#!/usr/bin/env bash
# A real SLURM on this machine, for the tests: slurmctld, slurmd, slurmdbd (accounting, which sacct
# and so submitit read job states from), a private munged and a private MariaDB. Everything lives
# in one folder ($HAMSWEEP_SLURM_DIR, default /tmp/hamsweep-slurm) with its own config, ports, munge
# socket and key: it touches neither /etc/slurm nor /etc/munge, nor another SLURM on this machine.
#
#   cluster/local/slurm.sh install      install the Debian packages that are missing (root, apt)
#   eval "$(cluster/local/slurm.sh up)"  start it (installs first if needed; already up: ok) and
#                                        export SLURM_CONF; the same lines are in $DIR/env.sh
#   cluster/local/slurm.sh status       the daemons, sinfo and squeue
#   cluster/local/slurm.sh down         cancel every job, stop the daemons, wipe all state
#   cluster/local/slurm.sh run CMD...   up, CMD with SLURM_CONF exported, down; exits with CMD's code
#                                        (a cluster of its own in a new /tmp/hamsweep-slurm-run.*
#                                        unless HAMSWEEP_SLURM_DIR is set)
#
# The node: `localhost`, 8 CPUs advertised on whatever the machine has (several 1-CPU jobs run at
# once), 2 fake GPUs (SLURM hands them out as CUDA_VISIBLE_DEVICES), partitions `debug` (default)
# and `gpu`. There is no systemd here: daemons run in the foreground, in the background of this
# script, and are stopped by the PIDs it recorded.
#
# Accounting is the real slurmdbd, not a stand-in for sacct: submitit reads job states from sacct
# only, and with its database created afresh `up` still takes about 3 s. `down` drops that database
# with the rest of the folder, so job ids start again from 1 and no old job reappears.
set -euo pipefail

DIR=$(realpath -m "${HAMSWEEP_SLURM_DIR:-/tmp/hamsweep-slurm}")
# unix sockets live under it, and their paths may not pass 107 characters
[ "${#DIR}" -le 80 ] || { echo "slurm.sh: error: HAMSWEEP_SLURM_DIR=$DIR is longer than 80 characters" >&2; exit 2; }
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server-core)
DAEMONS=(mariadbd munged slurmdbd slurmctld slurmd)  # in start order
CPUS=8          # advertised CPUs (SlurmdParameters=config_overrides), not the machine's
GPUS=2          # fake GPUs: character devices, as gres.conf rejects regular files
MEM_MB=262144   # advertised RealMemory, MB: --mem requests up to this are accepted (not enforced)
READY_S=30      # how long a daemon may take to answer before `up` gives up, seconds

say() { echo "slurm.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------- install

missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

cmd_install() {
  local missing
  mapfile -t missing < <(missing_packages)
  [ "${#missing[@]}" = 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root (apt-get)"
  say "installing ${missing[*]}"
  # packages' maintainer scripts must not start the machine-wide munge or slurm services:
  # policy-rc.d exit 101 forbids it (Docker images ship one; elsewhere one is put there meanwhile)
  local policy=/usr/sbin/policy-rc.d placed="" ok=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && placed=1
  fi
  # a fresh machine's package lists may be missing or stale: update them only then
  apt_install "${missing[@]}" || { apt-get update -qq && apt_install "${missing[@]}"; } || ok=$?
  [ -n "$placed" ] && rm -f "$policy"
  [ "$ok" = 0 ] || die "apt-get install ${missing[*]} failed"
}

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------- processes

pidfile() { echo "$DIR/run/$1.pid"; }

# PID of a daemon this script started, if it still runs (the name guards against a reused PID;
# setsid and setpriv are the same process just before they exec the daemon)
daemon_pid() {
  local f pid
  f=$(pidfile "$1")
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  case "$(cat "/proc/$pid/comm" 2>/dev/null)" in
    "$1" | setsid | setpriv) echo "$pid" ;;
    *) return 1 ;;
  esac
}

running_count() {
  local n=0 d
  for d in "${DAEMONS[@]}"; do daemon_pid "$d" >/dev/null && n=$((n + 1)); done
  echo "$n"
}

# start NAME CMD...: run CMD (a foreground daemon) in the background, record its PID
start() {
  local name=$1; shift
  setsid "$@" >>"$DIR/log/$name.out" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
}

# wait_for WHAT NAME CMD...: until CMD succeeds; fails with NAME's log if NAME dies or time runs out
wait_for() {
  local what=$1 name=$2; shift 2
  local deadline=$((SECONDS + READY_S))
  until "$@" >/dev/null 2>&1; do
    if ! daemon_pid "$name" >/dev/null; then
      tail -n 20 "$DIR/log/$name".* >&2 2>/dev/null || true
      die "$name exited before $what (logs in $DIR/log)"
    elif [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 20 "$DIR/log/$name".* >&2 2>/dev/null || true
      die "$name: no $what within ${READY_S} s (logs in $DIR/log)"
    fi
    sleep 0.1
  done
}

# SIGTERM to every daemon at once (each takes ~2 s to exit; the state goes away with them), SIGKILL
# to those still there after 10 s
stop_all() {
  local d pid pids=()
  for d in "${DAEMONS[@]}"; do
    pid=$(daemon_pid "$d") && kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    rm -f "$(pidfile "$d")"
  done
  local deadline=$((SECONDS + 10))
  for pid in "${pids[@]}"; do
    while [ -d "/proc/$pid" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if [ -d "/proc/$pid" ]; then
      say "pid $pid ignored SIGTERM for 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

# ---------------------------------------------------------------- configuration

# four TCP ports free right now on 127.0.0.1: slurmctld, slurmd, slurmdbd, mariadb
free_ports() {
  python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

write_configs() {
  local ctld_port=$1 slurmd_port=$2 dbd_port=$3 db_port=$4
  local auth="AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.sock,cred_expire=5"
  # cred_expire=5 (the minimum): a requeued job is held cred_expire + 1 s, not the default 121 s
  cat >"$DIR/etc/slurm.conf" <<EOF
# written by cluster/local/slurm.sh; SLURM_CONF points here
ClusterName=hamsweep
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
$auth
CredType=cred/munge
StateSaveLocation=$DIR/state/slurmctld
SlurmdSpoolDir=$DIR/state/slurmd
SlurmctldPidFile=$DIR/run/slurmctld.file.pid
SlurmdPidFile=$DIR/run/slurmd.file.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# no cgroups here
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# start a job at submission (~1 s), not at the next scheduling pass (~3 s); look at held jobs
# (a requeued one, a --begin) every second, not every 30 to 60 s
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
MailProg=/bin/true
JobRequeue=1
ReturnToService=2
# seconds between SIGTERM and SIGKILL at scancel or the time limit: a job that ignores SIGTERM
# (submitit's do; they act on SIGUSR2) takes that long to go, and so does slurm.sh down
KillWait=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
# the munge socket for talking to slurmdbd (AuthInfo's is not used for that)
AccountingStoragePass=$DIR/munge/munge.sock
AccountingStorageTRES=gres/gpu
GresTypes=gpu
SlurmdParameters=config_overrides
NodeName=localhost CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
EOF
  echo "AutoDetect=off
NodeName=localhost Name=gpu File=$DIR/dev/gpu[0-$((GPUS - 1))]" >"$DIR/etc/gres.conf"
  # slurmdbd refuses a config that others can read (it may hold a password)
  install -m 600 /dev/stdin "$DIR/etc/slurmdbd.conf" <<EOF
$auth
DbdHost=localhost
DbdPort=$dbd_port
SlurmUser=root
PidFile=$DIR/run/slurmdbd.file.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  printf 'export SLURM_CONF=%q\n' "$DIR/etc/slurm.conf" >"$DIR/env.sh"
  echo "$db_port" >"$DIR/etc/db_port"
}

make_fake_gpus() {
  local i
  for i in $(seq 0 $((GPUS - 1))); do
    mknod "$DIR/dev/gpu$i" c 1 3  # /dev/null's numbers: a device SLURM accepts, harmless to open
  done
}

make_munge_key() {
  install -d -m 755 -o munge -g munge "$DIR/munge"
  head -c 1024 /dev/urandom | install -m 400 -o munge -g munge /dev/stdin "$DIR/munge/munge.key"
}

# ---------------------------------------------------------------- daemons

start_mariadb() {
  local port
  port=$(cat "$DIR/etc/db_port")
  mkdir -p "$DIR/mysql"
  # --no-defaults: nothing from /etc/mysql; grants are skipped: a throwaway database that listens
  # on 127.0.0.1 only, at a port of its own
  start mariadbd mariadbd --no-defaults --user=root --datadir="$DIR/mysql" \
    --socket="$DIR/run/mysql.sock" --pid-file="$DIR/run/mariadbd.file.pid" \
    --bind-address=127.0.0.1 --port="$port" --skip-grant-tables --skip-name-resolve \
    --innodb-buffer-pool-size=32M --log-error="$DIR/log/mariadbd.log"
  wait_for "its socket" mariadbd test -S "$DIR/run/mysql.sock"
}

start_munged() {
  start munged setpriv --reuid=munge --regid=munge --clear-groups \
    munged -F --socket="$DIR/munge/munge.sock" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
    --seed-file="$DIR/munge/munged.seed"
  wait_for "its socket" munged test -S "$DIR/munge/munge.sock"
}

start_slurm() {
  export SLURM_CONF="$DIR/etc/slurm.conf"
  start slurmdbd slurmdbd -D  # it reads slurmdbd.conf beside $SLURM_CONF
  wait_for "an answer to sacctmgr" slurmdbd sacctmgr -n list cluster
  start slurmctld slurmctld -D -f "$SLURM_CONF"
  wait_for "an answer to scontrol ping" slurmctld scontrol ping
  start slurmd slurmd -D -N localhost -f "$SLURM_CONF"
  wait_for "node localhost idle" slurmd node_idle
}

node_idle() { [ "$(sinfo -h -n localhost -o %T | head -n 1)" = idle ]; }

# munged runs as the munge user: every folder above $DIR must let it through (a parent made by
# `mktemp -d` is mode 0700 and does not), or munged fails with "Permission denied" on its seed file
check_reachable() {
  local p
  p=$(dirname "$DIR")
  while [ "$p" != / ]; do
    if [ -d "$p" ] && ! setpriv --reuid=munge --regid=munge --clear-groups test -x "$p" 2>/dev/null; then
      say "error: HAMSWEEP_SLURM_DIR=$DIR is inside $p, which the munge user cannot enter (mode $(stat -c %a "$p")); run chmod o+x $p or choose a folder such as /tmp/hamsweep-slurm"
      exit 2
    fi
    p=$(dirname "$p")
  done
}

cmd_up() {
  cmd_install
  local n
  n=$(running_count)
  if [ "$n" = "${#DAEMONS[@]}" ]; then
    say "already up ($DIR)"
    cat "$DIR/env.sh"
    return 0
  fi
  [ "$n" = 0 ] || { say "only $n of ${#DAEMONS[@]} daemons run: restarting all"; cmd_down; }
  [ "$(id -u)" = 0 ] || die "up needs root (munged runs as the munge user, slurmd as root)"
  check_reachable
  # a clean start: no job, no job id, no accounting row left from an earlier cluster
  rm -rf "$DIR"
  mkdir -p "$DIR"/{etc,run,log,dev,state/slurmctld,state/slurmd}
  # a failed start leaves nothing running, and its logs for a look
  trap 'stop_all; say "nothing left running; logs in $DIR/log"' EXIT
  local ports
  read -r -a ports < <(free_ports)
  write_configs "${ports[@]}"
  make_fake_gpus
  make_munge_key
  start_mariadb
  start_munged
  start_slurm
  trap - EXIT
  say "up in $DIR (SLURM_CONF=$DIR/etc/slurm.conf)"
  cat "$DIR/env.sh"
}

# ---------------------------------------------------------------- down, status

# jobs outlive slurmd (their processes are not its children): cancel them and wait for an empty
# queue while slurmctld and slurmd still run; processes of a job still there after 15 s (KillWait
# is 2 s) are killed by the PIDs slurmd knows
cancel_all_jobs() {
  daemon_pid slurmctld >/dev/null || return 0
  local jobs deadline=$((SECONDS + 15))
  jobs=$(squeue -h -o %A 2>/dev/null) || return 0
  [ -n "$jobs" ] || return 0
  # shellcheck disable=SC2086
  scancel $jobs 2>/dev/null || true
  while [ -n "$(squeue -h -o %A 2>/dev/null)" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "jobs still there after 15 s, killing their processes:"
      squeue >&2
      scontrol listpids 2>/dev/null | awk 'NR > 1 {print $1}' | xargs -r kill -KILL 2>/dev/null || true
      return 0
    fi
    sleep 0.2
  done
}

cmd_down() {
  [ -d "$DIR" ] || return 0
  export SLURM_CONF="$DIR/etc/slurm.conf"
  cancel_all_jobs
  stop_all
  rm -rf "$DIR"
  say "down"
}

cmd_status() {
  local d pid rc=0
  for d in "${DAEMONS[@]}"; do
    if pid=$(daemon_pid "$d"); then echo "$d: running (pid $pid)"; else echo "$d: stopped"; rc=3; fi
  done
  [ "$rc" = 0 ] || return "$rc"
  export SLURM_CONF="$DIR/etc/slurm.conf"
  echo "SLURM_CONF=$SLURM_CONF"
  sinfo
  squeue
}

cmd_run() {
  [ $# -gt 0 ] || die "run needs a command, e.g. run .venv/bin/python -m pytest"
  # a cluster of its own unless HAMSWEEP_SLURM_DIR names one: a cluster a developer started with
  # `up`, or another `run` beside this one, is left alone
  [ -n "${HAMSWEEP_SLURM_DIR:-}" ] || DIR=$(mktemp -d /tmp/hamsweep-slurm-run.XXXXXX)
  cmd_up >/dev/null
  # shellcheck disable=SC1091
  . "$DIR/env.sh"
  local rc=0
  trap 'rc=130' INT TERM  # Ctrl-C ends CMD; the cluster still goes down below
  "$@" || rc=$?
  trap - INT TERM
  cmd_down
  return "$rc"
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  run) shift; cmd_run "$@" ;;
  *) echo "usage: $0 install|up|down|status|run CMD..." >&2; exit 2 ;;
esac
