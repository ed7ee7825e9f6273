//! `schema drift` sees every kind of object `pg_dump --schema-only` emits: grants and owners,
//! row level security and policies, trigger states, persistence, domains, composite and range
//! types, aggregates, rules, publications, partitions, collations, view options, sequence
//! ownership, comments and the rest, each changed by hand and named once; and a shadow database
//! is emptied of all of them, so it serves run after run.

use testkit::{Cluster, Migrations, Outcome, Run, with};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn run(args: &[&str], env: &[(String, String)], migrations: &Migrations) -> Outcome {
    let source = migrations.path().to_str().expect("utf-8").to_owned();
    let mut all = args.to_vec();
    all.extend(["--source", &source]);
    Run::xtask(XTASK, &all, env).output()
}

/// (kind, name, change) of each difference `schema drift --json` names.
fn differences(outcome: &Outcome) -> Vec<(String, String, String)> {
    let report: serde_json::Value = serde_json::from_str(&outcome.stdout).expect("drift --json");
    report["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|d| {
            let text = |key: &str| d[key].as_str().unwrap_or_default().to_owned();
            (text("kind"), text("name"), text("change"))
        })
        .collect()
}

/// One object of each kind drift reads beyond tables, columns, indexes, views and functions.
/// The roles `reader` and `auditor` are made on the cluster first.
const MORE_KINDS: &str = "\
CREATE TYPE pair AS (a integer, b text);
CREATE TYPE floatrange AS RANGE (subtype = float8, subtype_diff = float8mi);
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE DOMAIN positive AS integer NOT NULL CONSTRAINT positive_check CHECK (VALUE > 0);
CREATE TABLE items (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    amount positive,
    note text COLLATE \"C\"
) WITH (fillfactor = 80);
ALTER TABLE items ENABLE ROW LEVEL SECURITY;
CREATE POLICY items_readers ON items FOR SELECT TO reader USING (amount > 1);
GRANT SELECT ON items TO reader;
GRANT SELECT (name) ON items TO auditor;
COMMENT ON TABLE items IS 'things';
COMMENT ON COLUMN items.note IS 'free text';
CREATE TABLE notes (id integer, body text);
CREATE TABLE ledger (id integer);
CREATE UNLOGGED TABLE scratch (id integer);
CREATE TABLE events (at date NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE SEQUENCE counter OWNED BY items.id;
CREATE TABLE serials (id serial PRIMARY KEY);
CREATE VIEW item_names WITH (security_barrier) AS SELECT name FROM items;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
REVOKE EXECUTE ON FUNCTION touch() FROM PUBLIC;
CREATE TRIGGER items_touch BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION touch();
CREATE AGGREGATE total(integer) (SFUNC = int4pl, STYPE = integer, INITCOND = '0');
CREATE RULE serials_keep AS ON DELETE TO serials DO INSTEAD NOTHING;
CREATE PUBLICATION items_pub FOR TABLE items;
CREATE STATISTICS items_stats ON name, note FROM items;
CREATE OPERATOR === (LEFTARG = integer, RIGHTARG = integer, FUNCTION = int4eq);
CREATE FUNCTION mood_of(integer) RETURNS mood LANGUAGE sql AS $$ SELECT 'happy'::mood $$;
CREATE CAST (integer AS mood) WITH FUNCTION mood_of(integer);
CREATE COLLATION c_copy FROM \"C\";
CREATE TEXT SEARCH CONFIGURATION english_simple (COPY = english);
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE ON SEQUENCES TO reader;
";

#[test]
fn drift_names_each_kind_pg_dump_emits_changed_by_hand() {
    let cluster = Cluster::started();
    cluster.psql("postgres", "CREATE ROLE reader");
    cluster.psql("postgres", "CREATE ROLE auditor");
    let migrations = Migrations::empty();
    migrations.write("1_more_kinds.sql", MORE_KINDS);
    let env = cluster.env("app");
    run(&["migrate"], &env, &migrations).assert_code(0);
    // prestart's own table (the recorded environment) is no part of the schema, like sqlx's.
    assert_eq!(cluster.psql("app", "SELECT to_regclass('_prestart_environment') IS NOT NULL"), "t");
    let clean = run(&["schema", "drift", "--json"], &env, &migrations);
    assert_eq!(differences(&clean), vec![], "{}", clean.stderr);
    clean.assert_code(0).assert_stderr_contains("no drift");

    // (statement by hand, kind, name, change)
    let changes = [
        ("GRANT ALL ON notes TO auditor", "grants", "table public.notes", "unexpected"),
        ("ALTER TABLE items DISABLE ROW LEVEL SECURITY", "table", "public.items", "differs"),
        ("ALTER POLICY items_readers ON items USING (amount > 2)", "policy", "public.items.items_readers", "differs"),
        ("ALTER TABLE items DISABLE TRIGGER items_touch", "trigger", "public.items.items_touch", "differs"),
        ("ALTER TABLE scratch SET LOGGED", "table", "public.scratch", "differs"),
        ("ALTER DOMAIN positive DROP CONSTRAINT positive_check", "domain", "public.positive", "differs"),
        ("ALTER TYPE pair ADD ATTRIBUTE c date", "composite type", "public.pair", "differs"),
        ("DROP AGGREGATE total(integer)", "aggregate", "public.total(integer)", "missing"),
        (
            "CREATE RULE scratch_keep AS ON DELETE TO scratch DO INSTEAD NOTHING",
            "rule",
            "public.scratch.scratch_keep",
            "unexpected",
        ),
        ("ALTER PUBLICATION items_pub ADD TABLE notes", "publication", "items_pub", "differs"),
        (
            "ALTER TABLE events DETACH PARTITION events_2024; \
             ALTER TABLE events ATTACH PARTITION events_2024 FOR VALUES FROM ('2024-01-01') TO ('2026-01-01')",
            "table",
            "public.events_2024",
            "differs",
        ),
        ("ALTER TABLE notes ALTER COLUMN body TYPE text COLLATE \"C\"", "column", "public.notes.body", "differs"),
        ("ALTER VIEW item_names SET (security_invoker = on)", "view", "public.item_names", "differs"),
        ("ALTER SEQUENCE counter OWNED BY NONE", "sequence", "public.counter", "differs"),
        ("ALTER TABLE ledger OWNER TO auditor", "owner", "table public.ledger", "differs"),
        ("COMMENT ON TABLE items IS 'changed'", "comment", "table public.items", "differs"),
        ("COMMENT ON COLUMN items.note IS NULL", "comment", "column public.items.note", "missing"),
        ("REVOKE SELECT (name) ON items FROM auditor", "grants", "column public.items.name", "missing"),
        ("GRANT EXECUTE ON FUNCTION touch() TO PUBLIC", "grants", "function public.touch()", "missing"),
        (
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO reader",
            "default privileges",
            "for <migrator> on tables",
            "unexpected",
        ),
        (
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE USAGE ON SEQUENCES FROM reader",
            "default privileges",
            "for <migrator> on sequences in public",
            "missing",
        ),
        ("ALTER TABLE items SET (fillfactor = 90)", "table", "public.items", "differs"),
        ("ALTER TABLE serials DISABLE RULE serials_keep", "rule", "public.serials.serials_keep", "differs"),
        ("DROP STATISTICS items_stats", "statistics", "public.items_stats", "missing"),
        ("DROP OPERATOR === (integer, integer)", "operator", "public.===(integer, integer)", "missing"),
        ("DROP CAST (integer AS mood)", "cast", "(integer AS public.mood)", "missing"),
        (
            "ALTER TEXT SEARCH CONFIGURATION english_simple DROP MAPPING FOR email",
            "text search configuration",
            "public.english_simple",
            "differs",
        ),
        ("ALTER TYPE floatrange OWNER TO auditor", "owner", "range type public.floatrange", "differs"),
        // A table made by hand with parts of every kind is named once, as a table.
        (
            "CREATE TABLE by_hand (id serial PRIMARY KEY, body text); ALTER TABLE by_hand ENABLE ROW LEVEL SECURITY; \
             CREATE POLICY by_hand_all ON by_hand USING (true); GRANT SELECT ON by_hand TO reader; \
             COMMENT ON TABLE by_hand IS 'by hand'; COMMENT ON COLUMN by_hand.body IS 'body'; \
             CREATE RULE by_hand_keep AS ON DELETE TO by_hand DO INSTEAD NOTHING; \
             CREATE STATISTICS by_hand_stats ON id, body FROM by_hand; ALTER TABLE by_hand OWNER TO auditor",
            "table",
            "public.by_hand",
            "unexpected",
        ),
    ];
    // Two changes to one object are named once: the table items, made into one expected row.
    let expected_rows: std::collections::BTreeSet<(String, String, String)> = changes
        .iter()
        .map(|(_, kind, name, change)| (kind.to_string(), name.to_string(), change.to_string()))
        .collect();
    for (sql, ..) in &changes {
        cluster.psql("app", sql);
    }
    let outcome = run(&["schema", "drift", "--json"], &env, &migrations);
    outcome.assert_code(9).assert_stderr_contains("someone changed it by hand");
    let found = differences(&outcome);
    for (sql, kind, name, change) in &changes {
        let wanted = (kind.to_string(), name.to_string(), change.to_string());
        assert!(found.contains(&wanted), "{sql}: no {wanted:?} in {found:#?}");
    }
    // Each change is named once, and nothing else.
    assert_eq!(found.len(), expected_rows.len(), "{found:#?}");
    assert_eq!(cluster.psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'prestart_%'"), "0");
}

/// What a shadow database is given to build, with kinds the old emptying left behind.
const SHADOW_KINDS: &str = "\
CREATE TYPE pair AS (a integer, b text);
CREATE TYPE floatrange AS RANGE (subtype = float8, subtype_diff = float8mi);
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, amount positive, shape pair);
CREATE INDEX items_amount ON items (amount);
ALTER TABLE items ENABLE ROW LEVEL SECURITY;
CREATE POLICY items_readers ON items FOR SELECT TO reader USING (amount > 1);
GRANT SELECT ON items TO reader;
COMMENT ON TABLE items IS 'things';
CREATE TABLE serials (id serial);
CREATE STATISTICS items_stats ON id, amount FROM items;
CREATE FUNCTION mood_of(integer) RETURNS mood LANGUAGE sql AS $$ SELECT 'happy'::mood $$;
CREATE CAST (integer AS mood) WITH FUNCTION mood_of(integer);
CREATE AGGREGATE total(integer) (SFUNC = int4pl, STYPE = integer, INITCOND = '0');
CREATE OPERATOR === (LEFTARG = integer, RIGHTARG = integer, FUNCTION = int4eq);
CREATE COLLATION c_copy FROM \"C\";
CREATE TEXT SEARCH CONFIGURATION english_simple (COPY = english);
CREATE PUBLICATION items_pub FOR TABLE items;
ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE ON SEQUENCES TO reader;
CREATE SCHEMA billing;
ALTER DEFAULT PRIVILEGES IN SCHEMA billing GRANT SELECT ON TABLES TO reader;
CREATE TABLE billing.invoices (id integer);
";

#[test]
fn a_shadow_database_is_emptied_of_every_kind_and_serves_again() {
    let cluster = Cluster::started();
    cluster.psql("postgres", "CREATE ROLE reader");
    let migrations = Migrations::empty();
    migrations.write("1_shadow_kinds.sql", SHADOW_KINDS);
    run(&["migrate"], &cluster.env("app"), &migrations).assert_code(0);
    cluster.psql("postgres", &format!("CREATE ROLE owner LOGIN PASSWORD '{}'", testkit::PASSWORD));
    cluster.psql("postgres", "CREATE DATABASE shadow OWNER owner");
    cluster.psql("app", "GRANT SELECT ON _sqlx_migrations TO owner");
    let owner = with(cluster.env("app"), "POSTGRES_USER", "owner");
    for _ in 0..2 {
        let outcome = run(&["schema", "drift", "--json", "--shadow-database", "shadow"], &owner, &migrations);
        assert_eq!(differences(&outcome), vec![], "{}", outcome.stderr);
        outcome.assert_code(0).assert_stderr_contains("no drift");
    }
    for (what, sql) in [
        ("relations", "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"),
        ("types", "SELECT count(*) FROM pg_type WHERE typnamespace = 'public'::regnamespace"),
        ("functions", "SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace"),
        ("operators", "SELECT count(*) FROM pg_operator WHERE oprnamespace = 'public'::regnamespace"),
        ("collations", "SELECT count(*) FROM pg_collation WHERE collnamespace = 'public'::regnamespace"),
        ("text search configurations", "SELECT count(*) FROM pg_ts_config WHERE cfgnamespace = 'public'::regnamespace"),
        ("casts", "SELECT count(*) FROM pg_cast WHERE oid >= 16384"),
        ("publications", "SELECT count(*) FROM pg_publication"),
        ("default privileges", "SELECT count(*) FROM pg_default_acl"),
        ("schemas", "SELECT count(*) FROM pg_namespace WHERE nspname = 'billing'"),
    ] {
        assert_eq!(cluster.psql("shadow", sql), "0", "{what} left in the shadow database");
    }
    // Drift is still seen through it.
    cluster.psql("app", "ALTER TABLE items DISABLE ROW LEVEL SECURITY");
    run(&["schema", "drift", "--shadow-database", "shadow"], &owner, &migrations)
        .assert_code(9)
        .assert_stderr_contains("table public.items: differs");
}
