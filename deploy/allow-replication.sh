#!/bin/sh
# Init script of the prod-db service: lets the wal-receiver service (and base backups) open replication
# connections with a password; the image's own pg_hba.conf allows them only from localhost.
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
