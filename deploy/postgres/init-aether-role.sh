#!/bin/sh
# Run once by the postgres image on a new data directory: the gateway's role "aether"
# (a plain login role, not a superuser) owning the aether database and its schema, so its
# migrations run; no database but its own lets it connect.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v password="$AETHER_DB_PASSWORD" <<'SQL'
CREATE ROLE aether LOGIN PASSWORD :'password'
  NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
CREATE DATABASE aether OWNER aether;
REVOKE ALL ON DATABASE postgres FROM PUBLIC;
REVOKE ALL ON DATABASE template1 FROM PUBLIC;
REVOKE ALL ON DATABASE aether FROM PUBLIC;
\connect aether
ALTER SCHEMA public OWNER TO aether;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SQL
