//! The oracle's corpus: migration sets of awkward shapes, each applied by sqlx-cli and by us.
//! Written for this project; every set names the shape it covers.

/// One step of a set, given to both tools in turn.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// `sqlx migrate run` / `cargo xtask migrate`, with `--target-version` when given.
    Run(Option<i64>),
    /// `sqlx migrate revert` / `cargo xtask migrate revert`, with `--target-version` when given.
    Revert(Option<i64>),
}

/// A migration set: its files (name, bytes), the steps, and SQL the harness runs as the
/// superuser on each twin database first (roles and grants a set relies on).
pub struct Set {
    pub name: String,
    pub files: Vec<(String, Vec<u8>)>,
    pub steps: Vec<Step>,
    pub setup: &'static str,
    /// Where sqlx-cli does something indefensible and we do not: said, and held instead of the
    /// equality.
    pub deviation: Option<Deviation>,
}

/// What sqlx-cli does wrong on a set, and what we do instead.
pub struct Deviation {
    /// Why sqlx-cli's result cannot be defended.
    pub why: &'static str,
    /// Whether sqlx-cli exits 0 on it.
    pub sqlx_cli_succeeds: bool,
    /// Our exit code.
    pub ours: i32,
    /// A query on our database, and what it must answer.
    pub check: (&'static str, &'static str),
}

impl Set {
    fn new(name: impl Into<String>, files: &[(&str, &str)]) -> Set {
        Set {
            name: name.into(),
            files: files.iter().map(|(n, sql)| ((*n).to_owned(), sql.as_bytes().to_vec())).collect(),
            steps: vec![Step::Run(None)],
            setup: "",
            deviation: None,
        }
    }

    fn steps(mut self, steps: &[Step]) -> Set {
        self.steps = steps.to_vec();
        self
    }

    fn setup(mut self, sql: &'static str) -> Set {
        self.setup = sql;
        self
    }

    fn deviation(mut self, deviation: Deviation) -> Set {
        self.deviation = Some(deviation);
        self
    }
}

/// `CREATE TABLE t`, then `middle`, then a file that inserts 100: what the middle file does to
/// its transaction decides what the last one sees.
fn around(name: &str, middle: &str) -> Set {
    Set::new(
        name,
        &[
            ("1_create.sql", "CREATE TABLE t (id int);\n"),
            ("2_middle.sql", middle),
            ("3_after.sql", "INSERT INTO t VALUES (100);\n"),
        ],
    )
}

/// A file that ends sqlx's transaction itself, in every spelling: the bug that ran a file twice.
fn ends_its_transaction() -> Vec<Set> {
    [
        ("commit, then a comment", "BEGIN;\nINSERT INTO t VALUES (1);\nCOMMIT; -- done"),
        ("begin and commit on one line", "BEGIN; INSERT INTO t VALUES (1); COMMIT;"),
        ("lower case", "begin;\ninsert into t values (1);\ncommit;\n"),
        ("end", "INSERT INTO t VALUES (1);\nEND;\n"),
        ("end transaction", "INSERT INTO t VALUES (1);\nend transaction;\n"),
        ("commit and chain", "INSERT INTO t VALUES (1);\nCOMMIT AND CHAIN;\nINSERT INTO t VALUES (2);\n"),
        ("rollback, then more", "INSERT INTO t VALUES (1);\nROLLBACK;\nINSERT INTO t VALUES (2);\n"),
        ("rollback and chain", "INSERT INTO t VALUES (1);\nROLLBACK AND CHAIN;\nINSERT INTO t VALUES (2);\n"),
        ("abort", "INSERT INTO t VALUES (1);\nABORT;\n"),
        (
            "commit work between comments",
            "INSERT INTO t VALUES (1);\n/* done */ COMMIT WORK /* so */;\nINSERT INTO t VALUES (3);\n",
        ),
        ("start transaction", "START TRANSACTION;\nINSERT INTO t VALUES (1);\nCOMMIT;\n"),
        ("commit, then a failure", "INSERT INTO t VALUES (1); COMMIT; INSERT INTO nowhere VALUES (2);\n"),
        ("rollback, then a failure", "INSERT INTO t VALUES (1);\nROLLBACK;\nINSERT INTO t VALUES (2);\nSELECT 1/0;\n"),
        ("commit without a newline at the end", "INSERT INTO t VALUES (1);\nCOMMIT"),
        ("commit in the last line's comment's shadow", "INSERT INTO t VALUES (1);\nCOMMIT; -- END;"),
    ]
    .into_iter()
    .map(|(name, sql)| around(&format!("ends its transaction: {name}"), sql))
    .chain([Set::new(
        "ends its transaction, and a later file fails",
        &[
            ("1_create.sql", "CREATE TABLE t (id int);\n"),
            ("2_commits.sql", "INSERT INTO t VALUES (1);\nCOMMIT;\nINSERT INTO t VALUES (2);\n"),
            ("3_fails.sql", "INSERT INTO t VALUES (3);\nINSERT INTO nowhere VALUES (4);\n"),
            ("4_never.sql", "INSERT INTO t VALUES (5);\n"),
        ],
    )])
    .collect()
}

fn savepoints_procedures_and_bodies() -> Vec<Set> {
    let procedure =
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$\nBEGIN\n  INSERT INTO t VALUES (1);\n  COMMIT;\nEND;\n$$;\n";
    vec![
        around(
            "savepoints rolled back to and released",
            "SAVEPOINT a;\nINSERT INTO t VALUES (1);\nROLLBACK TO SAVEPOINT a;\nINSERT INTO t VALUES (2);\nRELEASE SAVEPOINT a;\n",
        ),
        around(
            "a savepoint released, then rolled back to",
            "SAVEPOINT a;\nINSERT INTO t VALUES (1);\nRELEASE a;\nROLLBACK TO a;\n",
        ),
        around("a procedure that commits, only created", procedure),
        Set::new(
            "a procedure that commits, called",
            &[
                ("1_create.sql", "CREATE TABLE t (id int);\n"),
                ("2_procedure.sql", procedure),
                ("3_call.sql", "CALL p();\n"),
                ("4_after.sql", "INSERT INTO t VALUES (100);\n"),
            ],
        ),
        around(
            "a procedure without a commit, created and called",
            "CREATE PROCEDURE q() LANGUAGE plpgsql AS $$\nBEGIN\n  INSERT INTO t VALUES (7);\nEND;\n$$;\nCALL q();\n",
        ),
        around("a DO block whose lines read END;", "DO $$\nBEGIN\n  INSERT INTO t VALUES (1);\nEND;\n$$;\n"),
        around("a DO block that commits", "DO $$\nBEGIN\n  INSERT INTO t VALUES (1);\n  COMMIT;\nEND;\n$$;\n"),
        around(
            "a function body with COMMIT; and END; lines, called",
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$\nBEGIN\n  -- COMMIT;\n  INSERT INTO t VALUES (9);\n  RETURN 1;\nEND;\n$body$;\nSELECT f();\n",
        ),
        around(
            "a SQL-standard body (BEGIN ATOMIC ... END)",
            "CREATE FUNCTION g() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT 1;\nEND;\nINSERT INTO t SELECT g();\n",
        ),
        around(
            "strings that read COMMIT; and END;",
            "CREATE TABLE notes (body text);\nINSERT INTO notes VALUES ('COMMIT;'), (E'it\\'s\\nEND;'), ($q$ROLLBACK;$q$), ($$ $a$ $$);\n",
        ),
        around(
            "a nested dollar quote",
            "DO $outer$\nBEGIN\n  EXECUTE $inner$INSERT INTO t VALUES (4)$inner$;\nEND;\n$outer$;\n",
        ),
    ]
}

/// A run of small files with a failure at each position; one with a syntax error, which a
/// server rejects before running any of a message.
fn failure_positions() -> Vec<Set> {
    let mut sets = Vec::new();
    for failing in 1..=6 {
        let mut files = vec![("0_log.sql".to_owned(), "CREATE TABLE log (n int);\n".to_owned())];
        for n in 1..=6 {
            let sql = if n == failing {
                format!("CREATE TABLE t{n} (id int);\nINSERT INTO log VALUES ('not a number');\n")
            } else {
                format!("CREATE TABLE t{n} (id int);\nINSERT INTO log VALUES ({n});\n")
            };
            files.push((format!("{n}_small_{n}.sql"), sql));
        }
        let files: Vec<(&str, &str)> = files.iter().map(|(n, s)| (n.as_str(), s.as_str())).collect();
        sets.push(Set::new(format!("a run of small files failing at file {failing}"), &files));
    }
    sets.push(Set::new(
        "a syntax error in the middle of a run",
        &[
            ("1_a.sql", "CREATE TABLE a (id int);\n"),
            ("2_b.sql", "CREATE TABLE b (id int);\n"),
            ("3_c.sql", "CREATE TABLE c (id int;\n"),
            ("4_d.sql", "CREATE TABLE d (id int);\n"),
        ],
    ));
    sets.push(Set::new(
        "an unterminated string at a file's end",
        &[
            ("1_a.sql", "CREATE TABLE a (id int);\n"),
            ("2_b.sql", "SELECT 'never ends;\n"),
            ("3_c.sql", "SELECT 'x';\n"),
        ],
    ));
    for failing in 1..=3 {
        let statements: Vec<String> = (1..=3)
            .map(|n| {
                if n == failing {
                    "INSERT INTO t VALUES (1/0);".to_owned()
                } else {
                    format!("INSERT INTO t VALUES ({n});")
                }
            })
            .collect();
        sets.push(around(&format!("a file failing at its statement {failing}"), &statements.join("\n")));
    }
    sets
}

fn no_transaction() -> Vec<Set> {
    vec![
        around(
            "no-transaction, failing midway",
            "-- no-transaction\nCREATE TABLE a (id int);\nINSERT INTO nowhere VALUES (1);\nCREATE TABLE b (id int);\n",
        ),
        around(
            "no-transaction with a COMMIT, then failing",
            "-- no-transaction\nCREATE TABLE a (id int);\nCOMMIT;\nINSERT INTO nowhere VALUES (1);\n",
        ),
        around(
            "no-transaction: one concurrent index",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY t_id ON t (id);\n",
        ),
        around(
            "no-transaction: two concurrent indexes in one file",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY t_a ON t (id);\nCREATE INDEX CONCURRENTLY t_b ON t (id);\n",
        ),
        around("no-transaction: VACUUM", "-- no-transaction\nVACUUM t;\n"),
        around("no-transaction, CRLF", "-- no-transaction\r\nCREATE INDEX CONCURRENTLY t_id ON t (id);\r\n"),
    ]
}

fn empty_crlf_and_bom() -> Vec<Set> {
    vec![
        around("an empty file", ""),
        around("a file of comments", "-- nothing here\n/* nor\n here */\n"),
        around("a file of blank lines", "\n\n   \n\t\n"),
        around("a file of one semicolon", ";\n"),
        around("CRLF line endings", "INSERT INTO t VALUES (1);\r\nINSERT INTO t VALUES (2);\r\n"),
        around("a byte order mark", "\u{feff}INSERT INTO t VALUES (1);\n"),
        around("a byte order mark before -- no-transaction", "\u{feff}-- no-transaction\nINSERT INTO t VALUES (1);\n"),
        around("unicode names and text", "CREATE TABLE café (naïve text);\nINSERT INTO café VALUES ('中文'), ('ß');\n"),
        around("a result set", "SELECT generate_series(1, 2000);\nINSERT INTO t VALUES (1);\n"),
        around("a warning (BEGIN inside sqlx's transaction)", "BEGIN;\nINSERT INTO t VALUES (1);\n"),
    ]
}

/// Settings one file makes and the next relies on: sqlx-cli runs every file on one session.
fn session_settings() -> Vec<Set> {
    let three = |name: &str, second: &str, third: &str| {
        Set::new(
            name,
            &[("1_create.sql", "CREATE TABLE t (id int);\n"), ("2_sets.sql", second), ("3_relies.sql", third)],
        )
    };
    vec![
        three(
            "search_path set by one file, relied on by the next",
            "CREATE SCHEMA app;\nSET search_path TO app, public;\n",
            "CREATE TABLE inside (id int);\nINSERT INTO inside VALUES (1);\n",
        ),
        three(
            "search_path without the migrations table's schema",
            "CREATE SCHEMA app;\nSET search_path TO app;\n",
            "CREATE TABLE inside (id int);\n",
        ),
        three(
            "SET LOCAL ends with its file",
            "SET LOCAL search_path TO nowhere;\n",
            "CREATE TABLE outside (id int);\n",
        ),
        three("SET ROLE, relied on by the next file", "SET ROLE oracle_owner;\n", "CREATE TABLE owned (id int);\n")
            .setup(OWNER),
        three("statement_timeout set by one file", "SET statement_timeout = '50ms';\n", "SELECT pg_sleep(0.3);\n"),
        three(
            "lock_timeout set by one file, read by the next",
            "SET lock_timeout = '5s';\n",
            "CREATE TABLE s AS SELECT current_setting('lock_timeout') AS v;\n",
        ),
        three(
            "lock_timeout read with no file setting it",
            "SELECT 1;\n",
            "CREATE TABLE s AS SELECT current_setting('lock_timeout') AS v;\n",
        ),
        three(
            "synchronous_commit read",
            "SELECT 1;\n",
            "CREATE TABLE s AS SELECT current_setting('synchronous_commit') AS v;\n",
        ),
        three(
            "SET TRANSACTION first in its file",
            "SELECT 1;\n",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;\nCREATE TABLE s AS SELECT current_setting('transaction_isolation') AS v;\n",
        ),
        three(
            "the session's transaction characteristics, set by one file",
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ;\n",
            "CREATE TABLE s AS SELECT current_setting('transaction_isolation') AS v;\n",
        ),
        three(
            "a time zone set by one file",
            "SET TIME ZONE 'Asia/Shanghai';\n",
            "CREATE TABLE z AS SELECT '2026-01-01 00:00'::timestamptz::text AS v;\n",
        ),
        three(
            "a custom setting set by one file",
            "SELECT set_config('oracle.mark', 'kept', false);\n",
            "CREATE TABLE s AS SELECT current_setting('oracle.mark') AS v;\n",
        ),
    ]
}

/// Statements that cannot run in a transaction block, in a transactional file.
fn not_in_a_transaction_block() -> Vec<Set> {
    vec![
        around("CREATE INDEX CONCURRENTLY in a transaction", "CREATE INDEX CONCURRENTLY t_id ON t (id);\n"),
        around("VACUUM in a transaction", "VACUUM t;\n"),
        around("CREATE DATABASE in a transaction", "CREATE DATABASE oracle_never;\n"),
        around("ALTER SYSTEM in a transaction", "ALTER SYSTEM SET work_mem = '8MB';\n"),
        Set::new(
            "an enum value added, used in the same file",
            &[
                ("1_type.sql", "CREATE TYPE mood AS ENUM ('sad');\nCREATE TABLE m (v mood);\n"),
                ("2_add.sql", "ALTER TYPE mood ADD VALUE 'happy';\nINSERT INTO m VALUES ('happy');\n"),
            ],
        ),
        Set::new(
            "an enum value added, used by the next file",
            &[
                ("1_type.sql", "CREATE TYPE mood AS ENUM ('sad');\nCREATE TABLE m (v mood);\n"),
                ("2_add.sql", "ALTER TYPE mood ADD VALUE 'happy';\n"),
                ("3_use.sql", "INSERT INTO m VALUES ('happy');\n"),
            ],
        ),
    ]
}

/// Reverts and target versions over the same kinds of files.
fn reverts_and_targets() -> Vec<Set> {
    use Step::{Revert, Run};
    let reversible = |name: &str, downs: [&str; 3]| {
        let files: Vec<(String, String)> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .flat_map(|(i, table)| {
                let version = i + 1;
                [
                    (
                        format!("{version}_{table}.up.sql"),
                        format!("CREATE TABLE {table} (id int);\nINSERT INTO {table} VALUES ({version});\n"),
                    ),
                    (format!("{version}_{table}.down.sql"), downs[i].to_owned()),
                ]
            })
            .collect();
        let files: Vec<(&str, &str)> = files.iter().map(|(n, s)| (n.as_str(), s.as_str())).collect();
        Set::new(name, &files)
    };
    let plain = ["DROP TABLE a;\n", "DROP TABLE b;\n", "DROP TABLE c;\n"];
    vec![
        reversible("reversible: up, down and targets", plain).steps(&[
            Run(Some(2)),
            Run(None),
            Revert(None),
            Revert(Some(1)),
            Run(Some(3)),
            Revert(Some(0)),
            Run(Some(1)),
        ]),
        reversible("reversible: targets no migration has", plain).steps(&[
            Run(Some(99)),
            Run(Some(0)),
            Run(Some(2)),
            Revert(Some(3)),
            Revert(Some(99)),
            Run(Some(1)),
        ]),
        reversible(
            "a down file that commits itself",
            ["DROP TABLE a;\n", "DROP TABLE b;\n", "DROP TABLE c;\nCOMMIT;\n"],
        )
        .steps(&[Run(None), Revert(None), Run(None)]),
        reversible(
            "a down file that fails, in a revert of all",
            ["DROP TABLE a;\n", "DROP TABLE nowhere;\n", "DROP TABLE c;\n"],
        )
        .steps(&[Run(None), Revert(Some(0)), Run(None)]),
        reversible(
            "a no-transaction down file",
            ["DROP TABLE a;\n", "DROP TABLE b;\n", "-- no-transaction\nDROP TABLE c;\nSELECT 1/0;\n"],
        )
        .steps(&[Run(None), Revert(None), Revert(None)]),
        reversible(
            "a down file that sets search_path for the next down",
            ["DROP TABLE a;\n", "DROP TABLE b;\n", "DROP TABLE c;\nSET search_path TO pg_temp, public;\n"],
        )
        .steps(&[Run(None), Revert(Some(0))]),
    ]
}

/// A role the sets may switch to, which may write sqlx's table (made by the harness as the
/// superuser, before the table exists: default privileges).
const OWNER: &str = "DO $$ BEGIN CREATE ROLE oracle_owner; EXCEPTION WHEN duplicate_object THEN NULL; END $$;\n\
                     GRANT CREATE ON SCHEMA public TO oracle_owner;\n\
                     GRANT oracle_owner TO postgres;\n\
                     ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO oracle_owner;\n";

/// Session state a file leaves (its user, a read-only default, a string syntax), and where
/// sqlx-cli's own steps after a file's SQL give a result that cannot be defended.
fn session_state_and_deviations() -> Vec<Set> {
    let two = |name: &str, second: &str| {
        Set::new(name, &[("1_create.sql", "CREATE TABLE t (id int);\n"), ("2_second.sql", second)])
    };
    vec![
        Set::new(
            "SET SESSION AUTHORIZATION, relied on by the next file",
            &[
                ("1_create.sql", "CREATE TABLE t (id int);\n"),
                ("2_user.sql", "SET SESSION AUTHORIZATION oracle_owner;\n"),
                ("3_owned.sql", "CREATE TABLE owned (id int);\n"),
            ],
        )
        .setup(OWNER),
        Set::new(
            "a read-only default set by one file: the next one fails, and is no failover",
            &[
                ("1_create.sql", "CREATE TABLE t (id int);\n"),
                ("2_read_only.sql", "SET default_transaction_read_only = on;\n"),
                ("3_write.sql", "CREATE TABLE x (id int);\n"),
            ],
        ),
        around("a read-only transaction of the file's own", "SET TRANSACTION READ ONLY;\nCREATE TABLE x (id int);\n"),
        two(
            "a COMMIT after a string that standard_conforming_strings = off ends elsewhere",
            "INSERT INTO t VALUES (1);\nSELECT 'a\\''; COMMIT; SELECT 1/0; -- ';\n",
        )
        .setup(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET standard_conforming_strings = off', current_database()); END $$;",
        ),
        around("a database that prints bytea escaped: the applied rows read again by each step", "INSERT INTO t VALUES (2);\n")
            .steps(&[Step::Run(Some(1)), Step::Run(None), Step::Run(None)])
            .setup(
                "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET bytea_output = escape', current_database()); END $$;",
            ),
        Set::new(
            "bytea_output = escape set by one file, relied on by the next",
            &[
                ("1_create.sql", "CREATE TABLE t (id int);\n"),
                ("2_escape.sql", "SET bytea_output = escape;\n"),
                ("3_relies.sql", "CREATE TABLE s AS SELECT 'ab'::bytea::text AS v;\n"),
                ("4_after.sql", "INSERT INTO t VALUES (4);\n"),
            ],
        )
        .steps(&[Step::Run(None), Step::Run(None)]),
        two("the last file makes the session read-only", "SET default_transaction_read_only = on;\n").deviation(Deviation {
            why: "sqlx-cli updates execution_time after the COMMIT, in a transaction of its own that the file's \
                  setting makes read-only: it applies and records the migration, then reports a failure",
            sqlx_cli_succeeds: false,
            ours: 0,
            check: ("SELECT string_agg(version::text, ',' ORDER BY version) FROM _sqlx_migrations", "1,2"),
        }),
        two("DEALLOCATE ALL in a file", "DEALLOCATE ALL;\nINSERT INTO t VALUES (1);\n").deviation(Deviation {
            why: "sqlx-cli's INSERT of the row is a statement it prepared for the file before; the file's DEALLOCATE \
                  ALL drops it, so sqlx-cli fails a migration that has nothing wrong with it",
            sqlx_cli_succeeds: false,
            ours: 0,
            check: ("SELECT (SELECT string_agg(id::text, ',') FROM t) || ' ' || (SELECT count(*) FROM _sqlx_migrations)", "1 2"),
        }),
        two("a file that lets go of the migration lock", "SELECT pg_advisory_unlock_all();\nINSERT INTO t VALUES (1);\n")
            .deviation(Deviation {
                why: "a migration that releases the migration lock lets another runner migrate beside it: ours checks \
                      the lock after the file's SQL, in its transaction, and rolls it back",
                sqlx_cli_succeeds: true,
                ours: 6,
                check: ("SELECT coalesce((SELECT string_agg(id::text, ',') FROM t), 'none') || ' ' || (SELECT count(*) FROM _sqlx_migrations)", "none 1"),
            }),
        two("DISCARD ALL in a no-transaction file", "-- no-transaction\nDISCARD ALL;\n").deviation(Deviation {
            why: "DISCARD ALL drops sqlx-cli's prepared INSERT, so it runs the file and leaves it unrecorded (a rerun \
                  runs it again); it also releases the migration lock, which ours says, with the file recorded as run",
            sqlx_cli_succeeds: false,
            ours: 6,
            check: ("SELECT string_agg(version::text, ',' ORDER BY version) FROM _sqlx_migrations", "1,2"),
        }),
    ]
}

/// Every set, in the order the tests take them.
pub fn all() -> Vec<Set> {
    let mut sets = Vec::new();
    sets.extend(ends_its_transaction());
    sets.extend(savepoints_procedures_and_bodies());
    sets.extend(failure_positions());
    sets.extend(no_transaction());
    sets.extend(empty_crlf_and_bom());
    sets.extend(session_settings());
    sets.extend(not_in_a_transaction_block());
    sets.extend(reverts_and_targets());
    sets.extend(session_state_and_deviations());
    sets
}
