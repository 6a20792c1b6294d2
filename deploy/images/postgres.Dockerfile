# PostgreSQL on the local Debian base (deploy/images/build-local.sh), for machines that
# cannot pull postgres:16-alpine: Debian's server, started by postgres-entrypoint.sh with
# the part of the official image's contract docker-compose.yml relies on (a superuser
# password from POSTGRES_PASSWORD, the scripts in /docker-entrypoint-initdb.d run once on a
# new data directory while the server listens on its Unix socket only, then the server on
# every address with password authentication).
ARG BASE=aether-python:bookworm
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(ls -d /usr/lib/postgresql/*/bin)" /usr/lib/postgresql/bin \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql /docker-entrypoint-initdb.d \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint.sh"]
