#!/usr/bin/env bash
# Make sure a Docker engine answers: use the one DOCKER_HOST (or the default socket) points at, or,
# as root on a machine where none runs (CI, fresh dev boxes), start dockerd in the background.
# Exit 0 when `docker info` works, 1 otherwise (the Docker tests then skip and say why).
set -uo pipefail
docker info >/dev/null 2>&1 && { echo "docker engine: reachable"; exit 0; }
if [ -n "${DOCKER_HOST:-}" ]; then echo "docker engine at DOCKER_HOST=$DOCKER_HOST is not reachable" >&2; exit 1; fi
[ "$(id -u)" -eq 0 ] || { echo "no docker engine, and starting one needs root (sudo dockerd &)" >&2; exit 1; }
command -v dockerd >/dev/null || { echo "dockerd not installed (apt-get install docker.io)" >&2; exit 1; }
LOG="${RETOOL_DOCKERD_LOG:-/tmp/retool-dockerd.log}"
setsid dockerd >"$LOG" 2>&1 < /dev/null &
for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && { echo "docker engine: started (log: $LOG)"; exit 0; }
    sleep 0.5
done
echo "dockerd did not come up within 30 s; last lines of $LOG:" >&2
tail -n 20 "$LOG" >&2
exit 1
