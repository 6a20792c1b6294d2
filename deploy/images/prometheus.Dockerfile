# Prometheus on the local Debian base (deploy/images/build-local.sh), for machines that
# cannot pull prom/prometheus: Debian's server, with the official image's contract as
# docker-compose.yml uses it (the server is the entry point and its flags the command,
# it runs as nobody and keeps its data in /prometheus).
ARG BASE=aether-python:bookworm
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus /etc/prometheus \
 && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
