//! The expand/contract recipes of docs/releases.md, each against the release before it: the
//! one-step form is refused (exit 6), each step of the multi-release form passes. The releases'
//! queries are written into the record by hand, in its documented format, as each release's
//! `.sqlx` would hold them.

use testkit::{Cluster, Migrations, Run};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// One deploy after another on one database, each checked against the release before it.
struct Deploys<'a> {
    cluster: &'a Cluster,
    database: String,
    migrations: Migrations,
    next_version: u32,
}

impl<'a> Deploys<'a> {
    fn new(cluster: &'a Cluster, database: &str) -> Deploys<'a> {
        cluster.create_database(database);
        let deploys =
            Deploys { cluster, database: database.to_owned(), migrations: Migrations::workspace(), next_version: 0 };
        let source = deploys.migrations.path().to_str().expect("utf-8").to_owned();
        Run::xtask(XTASK, &["prestart", "--source", &source], &cluster.env(database)).output().assert_code(0);
        deploys
    }

    /// Deploys `sql` as the next migration, with `before` (each query and its parameter types) the
    /// release still serving; the exit code. A refused file is taken out again.
    fn deploy(&mut self, before: &[(&str, &[&str])], sql: &str) -> i32 {
        let queries: Vec<serde_json::Value> = before
            .iter()
            .enumerate()
            .map(|(i, (query, parameters))| {
                serde_json::json!({"hash": format!("{i:04}"), "query": query, "parameters": parameters, "columns": []})
            })
            .collect();
        let record = format!(
            "DELETE FROM _prestart_releases; INSERT INTO _prestart_releases (name, queries) VALUES ('before', {})",
            quote(&serde_json::Value::Array(queries).to_string())
        );
        self.cluster.psql(&self.database, &record);
        self.next_version += 1;
        let file = self.migrations.write(&format!("2099010100{:04}_step.sql", self.next_version), sql);
        let source = self.migrations.path().to_str().expect("utf-8");
        let env = testkit::with(self.cluster.env(&self.database), "PRESTART_RELEASE", "next");
        let outcome = Run::xtask(XTASK, &["prestart", "--source", source], &env).output();
        let code = outcome.code.expect("an exit code");
        assert!(code == 0 || code == 6, "exit {code}:\n{}", outcome.stderr);
        if code == 6 {
            assert!(outcome.stderr.contains("of release before"), "{}", outcome.stderr);
            std::fs::remove_file(file).expect("take the refused file out");
        }
        code
    }
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

const READS_KIND: (&str, &[&str]) = ("SELECT id, kind FROM jobs WHERE id = $1", &["int8"]);
const INSERTS_KIND: (&str, &[&str]) =
    ("INSERT INTO jobs (kind, payload) VALUES ($1, $2) RETURNING id", &["text", "jsonb"]);

#[test]
fn rename_a_column() {
    let cluster = Cluster::started();
    let mut deploys = Deploys::new(&cluster, "rename");
    let v1 = [READS_KIND, INSERTS_KIND];
    assert_eq!(deploys.deploy(&v1, "ALTER TABLE jobs RENAME COLUMN kind TO job_kind;"), 6);
    let expand = "ALTER TABLE jobs ADD COLUMN job_kind text;
UPDATE jobs SET job_kind = kind WHERE job_kind IS NULL;
CREATE FUNCTION jobs_kind_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.job_kind := coalesce(NEW.job_kind, NEW.kind);
    NEW.kind := coalesce(NEW.kind, NEW.job_kind);
    RETURN NEW;
END $$;
CREATE TRIGGER jobs_kind_sync BEFORE INSERT OR UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION jobs_kind_sync();";
    assert_eq!(deploys.deploy(&v1, expand), 0);
    let v2 = [
        ("SELECT id, job_kind FROM jobs WHERE id = $1", &["int8"][..]),
        ("INSERT INTO jobs (kind, job_kind, payload) VALUES ($1, $1, $2) RETURNING id", &["text", "jsonb"][..]),
    ];
    assert_eq!(deploys.deploy(&v2, "ALTER TABLE jobs ALTER COLUMN kind DROP NOT NULL;"), 0);
    let v3 = [
        ("SELECT id, job_kind FROM jobs WHERE id = $1", &["int8"][..]),
        ("INSERT INTO jobs (job_kind, payload) VALUES ($1, $2) RETURNING id", &["text", "jsonb"][..]),
    ];
    let contract =
        "DROP TRIGGER jobs_kind_sync ON jobs;\nDROP FUNCTION jobs_kind_sync();\nALTER TABLE jobs DROP COLUMN kind;";
    assert_eq!(deploys.deploy(&v2, contract), 6, "v2 still writes kind: dropping it is refused");
    assert_eq!(deploys.deploy(&v3, contract), 0);
}

#[test]
fn change_a_columns_type() {
    let cluster = Cluster::started();
    let mut deploys = Deploys::new(&cluster, "retype");
    let v1 = [("SELECT id, attempts FROM jobs WHERE id = $1", &["int8"][..])];
    assert_eq!(deploys.deploy(&v1, "ALTER TABLE jobs ALTER COLUMN attempts TYPE bigint;"), 6);
    let expand = "ALTER TABLE jobs ADD COLUMN attempts_big bigint;
UPDATE jobs SET attempts_big = attempts;
CREATE FUNCTION jobs_attempts_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.attempts_big := NEW.attempts; RETURN NEW; END $$;
CREATE TRIGGER jobs_attempts_sync BEFORE INSERT OR UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION jobs_attempts_sync();";
    assert_eq!(deploys.deploy(&v1, expand), 0);
    let v2 = [("SELECT id, attempts_big FROM jobs WHERE id = $1", &["int8"][..])];
    let contract = "DROP TRIGGER jobs_attempts_sync ON jobs;\nDROP FUNCTION jobs_attempts_sync();\nALTER TABLE jobs DROP COLUMN attempts;";
    assert_eq!(deploys.deploy(&v2, contract), 0);
}

#[test]
fn add_a_required_column() {
    let cluster = Cluster::started();
    let mut deploys = Deploys::new(&cluster, "required");
    let v1 = [INSERTS_KIND];
    assert_eq!(deploys.deploy(&v1, "ALTER TABLE jobs ADD COLUMN tenant text NOT NULL;"), 6);
    assert_eq!(deploys.deploy(&v1, "ALTER TABLE jobs ADD COLUMN tenant text NOT NULL DEFAULT 'default';"), 0);
    assert_eq!(deploys.deploy(&v1, "ALTER TABLE jobs ALTER COLUMN tenant DROP DEFAULT;"), 6, "v1 leaves tenant out");
    let v2 =
        [("INSERT INTO jobs (kind, payload, tenant) VALUES ($1, $2, $3) RETURNING id", &["text", "jsonb", "text"][..])];
    assert_eq!(deploys.deploy(&v2, "ALTER TABLE jobs ALTER COLUMN tenant DROP DEFAULT;"), 0);
}

#[test]
fn drop_a_column() {
    let cluster = Cluster::started();
    let mut deploys = Deploys::new(&cluster, "dropped");
    let v1 = [("SELECT id, kind, payload FROM jobs WHERE id = $1", &["int8"][..])];
    assert_eq!(deploys.deploy(&v1, "ALTER TABLE jobs DROP COLUMN payload;"), 6);
    let v2 = [("SELECT id, kind FROM jobs WHERE id = $1", &["int8"][..])];
    assert_eq!(deploys.deploy(&v2, "ALTER TABLE jobs DROP COLUMN payload;"), 0);
}
