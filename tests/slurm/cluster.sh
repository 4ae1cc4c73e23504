#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for tests/test_slurm.py (and for trying profiles/slurm by hand).
#
#   tests/slurm/cluster.sh install   apt packages (Debian/Ubuntu, as root): slurmctld slurmd slurm-client munge
#                                    slurmdbd mariadb-server; writes the configs into /etc/slurm
#   tests/slurm/cluster.sh start     installs if needed, then starts munged, mariadbd, slurmdbd, slurmctld and
#                                    slurmd, and waits until the node takes jobs (about 5 s)
#   tests/slurm/cluster.sh stop      cancels the test cluster's jobs and stops the daemons it started
#   tests/slurm/cluster.sh status    each daemon, then sinfo; exit status 0 when the cluster takes jobs
#   tests/slurm/cluster.sh dbd stop|start   only slurmdbd (the tests' no-slurmdbd mode)
#
# Every subcommand can be repeated. Without systemd nothing starts daemons, so this script does, and stops
# them by the pids in their pid files. It refuses to overwrite a /etc/slurm/slurm.conf it did not write.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ETC=/etc/slurm
MARK="written by tests/slurm/cluster.sh"
LOGDIR=/var/log/slurm
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
# name:pidfile, in start order
DAEMONS=(munged:/run/munge/munged.pid mariadbd:/run/mysqld/mysqld.pid slurmdbd:/run/slurm/slurmdbd.pid
  slurmctld:/run/slurm/slurmctld.pid slurmd:/run/slurm/slurmd.pid)

say() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

pidfile_of() {
  local d
  for d in "${DAEMONS[@]}"; do [ "${d%%:*}" = "$1" ] && { echo "${d#*:}"; return; }; done
}

running() { # running NAME: its pid file names a live process
  local f pid
  f=$(pidfile_of "$1")
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2 i
  shift 2
  for ((i = 0; i < limit * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$what did not come up within ${limit}s; logs: $LOGDIR/ and /var/log/mysql/"
}

need_root() { [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts system daemons)"; }

installed() {
  local p
  for p in "${PACKAGES[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || return 1; done
}

write_configs() {
  if [ -f "$ETC/slurm.conf" ] && ! grep -q "$MARK" "$ETC/slurm.conf"; then
    die "$ETC/slurm.conf exists and was not written by this script: this machine has a Slurm of its own"
  fi
  local cpus mem
  cpus=$(nproc)
  # RealMemory as slurmd measures it (a larger value would drain the node), less 512 MB for the system.
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$((mem > 1024 ? mem - 512 : mem))
  mkdir -p "$ETC"
  {
    echo "# $MARK from $HERE/slurm.conf.in"
    sed -e "s/@CPUS@/$cpus/" -e "s/@MEMORY@/$mem/" "$HERE/slurm.conf.in"
  } >"$ETC/slurm.conf.tmp"
  mv "$ETC/slurm.conf.tmp" "$ETC/slurm.conf"
  cp "$HERE/gres.conf" "$ETC/gres.conf"
  install -m 600 "$HERE/slurmdbd.conf" "$ETC/slurmdbd.conf"
}

cmd_install() {
  need_root
  if ! installed; then
    say "installing ${PACKAGES[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
  fi
  write_configs
  mkdir -p /run/munge /run/slurm /run/mysqld /var/spool/slurm/d /var/spool/slurm/ctld "$LOGDIR"
  chown munge:munge /run/munge
  chown mysql:mysql /run/mysqld
  if [ ! -s /etc/munge/munge.key ]; then
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
  fi
}

start_munged() { runuser -u munge -- munged; }

start_mariadbd() {
  setsid mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid >>"$LOGDIR/mariadbd.log" 2>&1 </dev/null &
  wait_for 30 mariadbd mariadb-admin ping
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'hf2gguf-test';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start_slurmdbd() {
  slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
}

start_slurmctld() {
  slurmctld
  wait_for 30 slurmctld scontrol ping
}

start_slurmd() { slurmd -N localhost; }

accounts() { # the cluster, and two accounts (the tests give one to a pair): idempotent
  sacctmgr -i add cluster hf2gguf >/dev/null 2>&1 || true
  sacctmgr -i add account hf2gguf,hf2gguf-gpu cluster=hf2gguf >/dev/null 2>&1 || true
  sacctmgr -i add user root account=hf2gguf,hf2gguf-gpu defaultaccount=hf2gguf >/dev/null 2>&1 || true
}

node_idle() { sinfo -h -N -o '%t' | grep -Eq '^(idle|mix|alloc)'; }

cmd_start() {
  need_root
  cmd_install
  local d name
  for d in "${DAEMONS[@]}"; do
    name=${d%%:*}
    if running "$name"; then continue; fi
    say "starting $name"
    "start_$name"
    if [ "$name" = slurmdbd ]; then accounts; fi
  done
  # A node left down or drained by an earlier run is given back.
  sleep 0.5
  if ! node_idle; then scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true; fi
  wait_for 30 "the node (sinfo)" node_idle
  say "up: $(sinfo -h -o '%P %t %N' | tr '\n' ' ')"
}

stop_daemon() {
  local name=$1 f pid i
  f=$(pidfile_of "$name")
  running "$name" || { rm -f "$f"; return 0; }
  pid=$(cat "$f")
  say "stopping $name ($pid)"
  kill "$pid"
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$f"
}

cmd_stop() {
  need_root
  if running slurmctld; then scancel --full --user=root >/dev/null 2>&1 || true; fi
  local i
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop_daemon "${DAEMONS[$i]%%:*}"; done
}

cmd_status() {
  local d name ok=0
  for d in "${DAEMONS[@]}"; do
    name=${d%%:*}
    if running "$name"; then echo "$name: running ($(cat "$(pidfile_of "$name")"))"; else echo "$name: stopped"; ok=1; fi
  done
  if command -v sinfo >/dev/null && sinfo -h -o '%P %a %t %N %G' 2>/dev/null; then
    node_idle || ok=1
  else
    ok=1
  fi
  return $ok
}

cmd_dbd() {
  need_root
  case "${1:-}" in
    stop) stop_daemon slurmdbd ;;
    start) running slurmdbd || start_slurmdbd ;;
    *) die "usage: $0 dbd stop|start" ;;
  esac
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  dbd) cmd_dbd "${2:-}" ;;
  *) die "usage: $0 install|start|stop|status|dbd stop|start" ;;
esac
