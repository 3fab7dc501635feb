-- A least-privilege PostgreSQL role for outbox-relay.
--
-- Run it with psql as a superuser (only a superuser can give a role the
-- REPLICATION attribute), connected to the application's database, after
-- the outbox table exists (`outbox-relay migrate` or the application's own
-- migration):
--
--   psql "postgres://postgres@db:5432/app" \
--     -v password='choose-a-real-one' \
--     -f deploy/sql/least-privilege.sql
--
-- Optional variables, with their defaults (match the relay's settings):
--   -v schema=public -v table=portal_event_outbox   RELAY_OUTBOX_TABLE
--   -v publication=outbox_relay                     RELAY_PUBLICATION
--
-- The password is passed as a psql variable so that it is not in this file.
-- It still travels in the ALTER ROLE statement (and so may reach the server
-- log with log_statement = 'ddl' or 'all'); to avoid that, leave `password`
-- unset and type it with psql's \password outbox_relay afterwards.
--
-- It is idempotent: run it again after changing the table or the password.
-- The relay then connects with
--   RELAY_DATABASE_URL=postgres://outbox_relay:<password>@db:5432/app

\set ON_ERROR_STOP on

\if :{?schema}
\else
  \set schema public
\endif
\if :{?table}
\else
  \set table portal_event_outbox
\endif
\if :{?publication}
\else
  \set publication outbox_relay
\endif

BEGIN;

-- LOGIN: the relay connects with it.
-- REPLICATION: the fast path opens a logical replication connection,
-- creates its slot (CREATE_REPLICATION_SLOT) and streams from it, and the
-- slot guard drops an over-limit slot with pg_drop_replication_slot(): all
-- of which need this attribute. REPLICATION reads every change in the WAL
-- of the database, so the role is still a privileged one: keep its password
-- in a Secret. Without REPLICATION (and with RELAY_CDC=auto) the relay
-- runs sweep-only.
-- Nothing else: not SUPERUSER, CREATEDB, CREATEROLE or BYPASSRLS.
SELECT 'CREATE ROLE outbox_relay'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'outbox_relay') \gexec
ALTER ROLE outbox_relay WITH LOGIN REPLICATION
  NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
\if :{?password}
ALTER ROLE outbox_relay WITH PASSWORD :'password';
\endif

-- CONNECT: to open sessions in this database (PUBLIC usually has it, but a
-- hardened database revokes it from PUBLIC).
GRANT CONNECT ON DATABASE :"DBNAME" TO outbox_relay;

-- USAGE on the schema: to reach the table in it.
GRANT USAGE ON SCHEMA :"schema" TO outbox_relay;

-- On the outbox table, exactly what the relay's statements need:
--   SELECT  the claim reads the rows it updates (WHERE, RETURNING); the
--           start-up check reads the columns from information_schema, which
--           shows only the columns a role has a privilege on; `status`
--           counts rows.
--   UPDATE  the claim (a lease on next_attempt_at, attempts + 1, taken with
--           SELECT ... FOR UPDATE SKIP LOCKED, which needs UPDATE too), the
--           outcome (delivered, retry, dead), giving a lease back on
--           shutdown, and `outbox-relay requeue`.
--   DELETE  retention (RELAY_RETENTION) deletes old delivered rows.
-- Not INSERT: the application inserts the events, the relay never does, so
-- it needs no privilege on the id sequence either. Not TRUNCATE,
-- REFERENCES or TRIGGER.
GRANT SELECT, UPDATE, DELETE ON TABLE :"schema".:"table" TO outbox_relay;

-- On PostgreSQL 16 and later the relay writes its outcomes in a session
-- that carries a replication origin, so that its stream never receives
-- them (internal/store/origin.go). These functions are the superuser's
-- unless granted; without them the relay works, and the walsender decodes
-- its writes too.
SELECT format('GRANT EXECUTE ON FUNCTION %s TO outbox_relay', p.oid::regprocedure)
FROM pg_proc p
WHERE p.proname IN ('pg_replication_origin_create', 'pg_replication_origin_oid', 'pg_replication_origin_session_setup')
  AND p.pronamespace = 'pg_catalog'::regnamespace \gexec

-- The publication. CREATE PUBLICATION ... FOR TABLE requires owning the
-- table (in every PostgreSQL version; a superuser bypasses it) and CREATE
-- on the database, so the table's owner makes it: `outbox-relay migrate`
-- does when it runs as the owner, or the application's migration does with
--   CREATE PUBLICATION outbox_relay FOR TABLE public.portal_event_outbox
--     WITH (publish = 'insert, update, delete');
-- (The updates and deletes let the stream send each row as its transaction
-- committed it; they need the table's primary key as replica identity.)
-- The relay only streams from it by name, which takes REPLICATION and no
-- privilege on the publication: it need not own it, so leave it with whoever
-- made it. (Transferring it with
--   ALTER PUBLICATION outbox_relay OWNER TO outbox_relay;
-- would also need GRANT CREATE ON DATABASE to the relay: more than it
-- needs.) If it is missing, this script, running as a superuser, makes it
-- here, so that the relay does not quietly run sweep-only.
SELECT format('CREATE PUBLICATION %I FOR TABLE %I.%I WITH (publish = %L)',
              :'publication', :'schema', :'table', 'insert, update, delete')
WHERE NOT EXISTS (SELECT FROM pg_publication WHERE pubname = :'publication') \gexec
-- A publication of that name that does not cover the table would deliver
-- nothing: stop rather than leave it to be found later.
SELECT format('DO $check$ BEGIN RAISE EXCEPTION %L; END $check$',
              format('publication %s does not include the table %s.%s', :'publication', :'schema', :'table'))
WHERE NOT EXISTS (SELECT FROM pg_publication_tables
                  WHERE pubname = :'publication' AND schemaname = :'schema' AND tablename = :'table') \gexec

-- Not needed, and why:
--   pg_signal_backend: the slot guard ends the walsender that holds the
--     slot with pg_terminate_backend() before dropping the slot. That
--     walsender is the relay's own connection (or another relay replica's),
--     so it runs as outbox_relay, and a role may always signal backends of
--     its own role. Only a slot held by some other role would need more,
--     and that slot is not the relay's to drop.
--   pg_monitor / pg_read_all_stats: the slot figures come from
--     pg_replication_slots, pg_current_wal_lsn() and
--     current_setting('max_slot_wal_keep_size'), all readable by any role.

COMMIT;

-- pg_hba.conf must let the role in over the network for the database
-- itself; a logical replication connection matches the database name too
-- (the `replication` keyword in pg_hba.conf is for physical replication):
--   host  app  outbox_relay  10.0.0.0/8  scram-sha-256
