#!/bin/bash
# Runs inside the image's chroot after the packages are installed.
set -euo pipefail
v=$(ls /usr/lib/postgresql | sort -V | tail -1)
echo "PostgreSQL $v"
ln -sfn "/usr/lib/postgresql/$v/bin" /usr/local/lib/postgresql-bin
# The package created a cluster of its own (Debian's pg_createcluster
# layout); the image runs one data directory of its own instead.
rm -rf "/etc/postgresql/$v/main" "/var/lib/postgresql/$v/main"
install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data
printf 'mq\n' >/tmp/mq-pw
chown postgres /tmp/mq-pw
pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
pg /usr/local/lib/postgresql-bin/initdb -D /var/lib/postgresql/data -U mq --pwfile=/tmp/mq-pw \
  --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8
rm -f /tmp/mq-pw
# Clients reach the server through Docker's bridge: not from 127.0.0.1.
echo 'host all all 0.0.0.0/0 scram-sha-256' >>/var/lib/postgresql/data/pg_hba.conf
echo 'host all all ::/0 scram-sha-256' >>/var/lib/postgresql/data/pg_hba.conf
echo "include '/etc/mq-postgres/postgresql.conf'" >>/var/lib/postgresql/data/postgresql.conf
echo 'CREATE DATABASE mq OWNER mq;' |
  pg /usr/local/lib/postgresql-bin/postgres --single -D /var/lib/postgresql/data \
    -c config_file=/var/lib/postgresql/data/postgresql.conf postgres
ls -la /var/lib/postgresql/data
# `postgres -c name=value ...` (the official image's command line) works
# here too: the harness drives both images with the same command.
ln -sfn mq-postgres-start /usr/local/bin/postgres
