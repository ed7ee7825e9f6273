//! Catalog snapshots: every object of a schema as (kind, name) and its definition, read the same
//! way from the live database and from the one the migrations build, and their differences.

use std::collections::BTreeMap;

use backend::db::bounded;
use serde::Serialize;
use sqlx::postgres::PgConnection;

/// One difference between the schema the migrations produce and the live one.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub kind: String,
    pub name: String,
    pub change: Change,
    /// What the migrations give.
    pub expected: Option<String>,
    /// What the database has.
    pub found: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The migrations make it; the database lacks it.
    Missing,
    /// The database has it; no migration makes it.
    Unexpected,
    /// Both have it, defined differently.
    Differs,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = |text: &Option<String>| {
            let text = text.as_deref().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
            if text.chars().count() > 100 { format!("{}...", text.chars().take(100).collect::<String>()) } else { text }
        };
        // A grant says who got or lost what, not only that its object's ACL changed.
        let grantees = matches!(self.kind.as_str(), "grants" | "default privileges")
            .then(|| super::grants::changes(self.expected.as_deref(), self.found.as_deref()))
            .flatten();
        if let Some(grantees) = grantees {
            let how = match self.change {
                Change::Missing => "a migration grants what the database lacks: revoked by hand?",
                Change::Unexpected => "not granted by any migration: granted by hand?",
                Change::Differs => "differs from what the migrations grant",
            };
            return write!(f, "{} {}: {grantees} ({how})", self.kind, self.name);
        }
        match self.change {
            Change::Missing => {
                write!(f, "{} {}: missing (a migration makes it; dropped by hand?)", self.kind, self.name)
            }
            Change::Unexpected => {
                write!(f, "{} {}: not made by any migration (made by hand?)", self.kind, self.name)
            }
            Change::Differs => write!(
                f,
                "{} {}: differs; the migrations give `{}`, the database has `{}`",
                self.kind,
                self.name,
                short(&self.expected),
                short(&self.found)
            ),
        }
    }
}

/// One object of a snapshot: its definition, and the object it is a part of (the table of a
/// column, the object of a grant or a comment), which says it instead when it is on one side only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub definition: String,
    pub parent: Option<(String, String)>,
}

/// Every object of the schema as (kind, name) → its definition, outside the system schemas, the
/// objects of extensions, sqlx's own table and prestart's `_prestart_environment` and
/// `_prestart_releases`.
pub type Snapshot = BTreeMap<(String, String), Object>;

/// The catalog read, one query. `$1` is the migrations table (its oid, or NULL): it stays out, and
/// so do `_prestart_environment` and `_prestart_releases` in `public` or in the migrations table's schema, with their
/// indexes and sequences. The migrations table's owner, the role that ran the migrations, is named
/// `<migrator>` in owners, grants and policies: the expected database is built by whoever runs
/// drift, the live one by the role that migrated it. In grants, the object's own owner is `<owner>`, so an `OWNER TO`
/// changes its owner and nothing else. Other roles are compared by name.
///
/// The kinds, beyond the tables, columns, constraints, indexes, views and functions:
/// - `table`: persistence (unlogged), partition key, partition of (with its bound) or inherits,
///   typed table, access method, tablespace, reloptions and the TOAST table's, row level security
///   (enabled, forced), replica identity;
/// - `column`: also a collation other than its type's, storage other than its type's, compression
///   (14+), a generated expression, a statistics target, attribute options;
/// - `index`: also its tablespace and CLUSTER ON; `constraint`: also foreign keys whose triggers
///   were disabled;
/// - `sequence`: also cache, unlogged, and OWNED BY (or the identity it serves; the owner of an
///   identity's sequence is its table's, so it has no `owner` row);
/// - `view`, `materialized view`: also their options (security_invoker, security_barrier,
///   check_option);
/// - `trigger`, `rule`, `event trigger`: also their enabled state (DISABLED, ENABLE REPLICA,
///   ENABLE ALWAYS);
/// - `composite type` (its attributes), `domain` (base type, collation, default, NOT NULL, its
///   named constraints), `range type` (subtype, opclass, collation, canonical, subtype_diff),
///   `aggregate` (its pg_aggregate row), `rule`, `policy` (permissive, command, roles, USING,
///   WITH CHECK), `statistics` (extended statistics and their target), `operator`, `cast` (those
///   made after initdb), `collation`, `text search dictionary`, `text search configuration` (parser
///   and mappings), `publication` (what it publishes, via root, its tables, and on 15+ their
///   column lists and row filters and its schemas), `event trigger`;
/// - `owner` (named `KIND NAME` after its object), `grants` (likewise: the ACL when it is not the
///   default one, sorted, column grants included), `default privileges` (pg_default_acl, named
///   after its role, object type and schema), `comment` (on any object listed here).
///
/// Left out on purpose: foreign data wrappers, servers, user mappings and foreign tables (they
/// name other servers and credentials, which differ by environment by design); subscriptions
/// (superuser-only catalog, per environment); roles, tablespaces and database settings (cluster or
/// database wide, not made by migrations); security labels (need a provider); operator classes
/// and families, conversions, text search parsers and templates, base types, languages, access
/// methods and transforms (they need C code, so come from extensions); the owner of `public`
/// (it comes with the database); sequence values, extension versions and collation versions
/// (state, not schema); the comments and options of a view's columns and of a composite type's
/// attributes.
const SNAPSHOT: &str = include_str!("catalog/snapshot.sql");

/// The query for a server version (`server_version_num`): the catalog columns that came after 13.
fn snapshot_query(version: u32) -> String {
    let compression = if version >= 14_00_00 {
        "|| CASE WHEN a.attcompression::text <> '' THEN ' COMPRESSION ' || a.attcompression::text ELSE '' END"
    } else {
        ""
    };
    let collation_locale = match version {
        v if v < 15_00_00 => "",
        v if v < 16_00_00 => ", 'locale = ' || c.colliculocale",
        v if v < 17_00_00 => ", 'locale = ' || c.colliculocale, 'rules = ' || c.collicurules",
        _ => ", 'locale = ' || c.colllocale, 'rules = ' || c.collicurules",
    };
    let publication_members = if version >= 15_00_00 {
        PUBLICATION_MEMBERS_15
    } else {
        "'tables ' || (SELECT pg_catalog.string_agg(pr.prrelid::pg_catalog.regclass::text, ', ' \
         ORDER BY pr.prrelid::pg_catalog.regclass::text) FROM pg_catalog.pg_publication_rel pr WHERE pr.prpubid = p.oid)"
    };
    SNAPSHOT
        .replace("{compression}", compression)
        .replace("{collation_locale}", collation_locale)
        .replace("{publication_members}", publication_members)
}

/// A publication's tables with their column lists and row filters, and its schemas (15+).
const PUBLICATION_MEMBERS_15: &str = include_str!("catalog/publication_members_15.sql");

/// Read with `search_path` set to the catalog alone, so every name comes schema-qualified and
/// both databases word their definitions alike whatever their search paths. The migrations table
/// is found first under the session's own search path, as sqlx finds it. The version of an
/// extension is left out: one created before an upgrade differs from a fresh one by right.
pub async fn snapshot(conn: &mut PgConnection, migrations_table: &str) -> anyhow::Result<Snapshot> {
    use sqlx::Connection as _;
    use sqlx::postgres::types::Oid;
    type Row = (String, String, Option<String>, Option<String>, Option<String>);
    let read = async {
        let mut tx = conn.begin().await?;
        // Under the session's search path, as sqlx finds the table; then the catalog's alone (the
        // materialized CTE is read before the outer row sets it).
        let (table, version, _): (Option<Oid>, i32, String) = sqlx::query_as(
            "WITH t AS MATERIALIZED (SELECT pg_catalog.to_regclass($1)::pg_catalog.oid AS oid) \
             SELECT t.oid, pg_catalog.current_setting('server_version_num')::int4, \
                    pg_catalog.set_config('search_path', 'pg_catalog', true) FROM t",
        )
        .bind(migrations_table)
        .persistent(false)
        .fetch_one(&mut *tx)
        .await?;
        let query = snapshot_query(u32::try_from(version).unwrap_or_default());
        let rows: Vec<Row> =
            sqlx::query_as(sqlx::AssertSqlSafe(query)).bind(table).persistent(false).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(rows)
    };
    let rows = bounded(read).await?;
    Ok(rows
        .into_iter()
        .map(|(kind, name, definition, parent_kind, parent_name)| {
            let parent = parent_kind.zip(parent_name);
            ((kind, name), Object { definition: definition.unwrap_or_default(), parent })
        })
        .collect())
}

/// The differences, without the parts of an object that is missing or unexpected as a whole (the
/// columns, indexes, constraints, triggers, rules, policies and statistics of a table, the owner,
/// grants and comment of anything): the object says it.
pub fn compare(expected: &Snapshot, found: &Snapshot) -> Vec<Difference> {
    let on_both = |key: &(String, String)| expected.contains_key(key) && found.contains_key(key);
    let part_of_whole = |object: &Object| object.parent.as_ref().is_some_and(|parent| !on_both(parent));
    let mut differences = Vec::new();
    for ((kind, name), object) in expected {
        match found.get(&(kind.clone(), name.clone())) {
            None if part_of_whole(object) => {}
            None => differences.push(Difference {
                kind: kind.clone(),
                name: name.clone(),
                change: Change::Missing,
                expected: Some(object.definition.clone()),
                found: None,
            }),
            Some(live) if live.definition != object.definition => differences.push(Difference {
                kind: kind.clone(),
                name: name.clone(),
                change: Change::Differs,
                expected: Some(object.definition.clone()),
                found: Some(live.definition.clone()),
            }),
            Some(_) => {}
        }
    }
    for ((kind, name), object) in found {
        if !expected.contains_key(&(kind.clone(), name.clone())) && !part_of_whole(object) {
            differences.push(Difference {
                kind: kind.clone(),
                name: name.clone(),
                change: Change::Unexpected,
                expected: None,
                found: Some(object.definition.clone()),
            });
        }
    }
    // The largest changes first: a table missing says more than a default changed.
    differences.sort_by_key(|d| (KINDS.iter().position(|k| *k == d.kind).unwrap_or(KINDS.len()), d.name.clone()));
    differences
}

/// The kinds of objects, from the largest.
const KINDS: [&str; 31] = [
    "extension",
    "schema",
    "table",
    "view",
    "materialized view",
    "composite type",
    "enum",
    "domain",
    "range type",
    "sequence",
    "function",
    "aggregate",
    "procedure",
    "operator",
    "cast",
    "collation",
    "text search dictionary",
    "text search configuration",
    "publication",
    "event trigger",
    "column",
    "constraint",
    "index",
    "statistics",
    "trigger",
    "rule",
    "policy",
    "default privileges",
    "owner",
    "grants",
    "comment",
];

/// What a build may leave in a shadow database beyond an empty one's, each with the statement
/// that drops it, in the order they run: one list, so that "is it empty" and "empty it" agree.
/// Objects of extensions, and those that are parts of another (a range type's constructors, an
/// array type, an identity's sequence), go with what they belong to.
macro_rules! shadow_held {
    () => {
        r#"
WITH members AS (
    -- Objects of extensions, and the parts of another object (a range type's constructors, an array type).
    SELECT classid, objid, deptype FROM pg_catalog.pg_depend WHERE deptype = 'e' OR deptype = 'i' AND objsubid = 0
), public AS (
    SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'public'
)
SELECT 1 AS rank, pg_catalog.format('DROP EVENT TRIGGER IF EXISTS %I', evtname) AS statement FROM pg_catalog.pg_event_trigger e
WHERE NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_event_trigger'::pg_catalog.regclass AND m.objid = e.oid)
UNION ALL
SELECT 2, pg_catalog.format('DROP PUBLICATION IF EXISTS %I', pubname) FROM pg_catalog.pg_publication
UNION ALL
SELECT 4, pg_catalog.format('DROP SCHEMA IF EXISTS %I CASCADE', nspname) FROM pg_catalog.pg_namespace
WHERE nspname NOT IN ('public', 'pg_catalog', 'information_schema', 'pg_toast')
  AND nspname NOT LIKE 'pg\_temp\_%' AND nspname NOT LIKE 'pg\_toast\_temp\_%'
UNION ALL
SELECT 5, pg_catalog.format('DROP EXTENSION IF EXISTS %I CASCADE', extname) FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql'
UNION ALL
-- A default ACL goes once it holds nothing (in a schema) or its defaults again (everywhere).
SELECT 3, pg_catalog.format('ALTER DEFAULT PRIVILEGES FOR ROLE %I%s REVOKE ALL ON %s FROM %s%s', r.rolname,
           CASE WHEN d.defaclnamespace = 0 THEN '' ELSE pg_catalog.format(' IN SCHEMA %I', n.nspname) END, o.word,
           (SELECT pg_catalog.string_agg(DISTINCT CASE WHEN e.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(g.rolname) END, ', ')
            FROM pg_catalog.aclexplode(d.defaclacl) e LEFT JOIN pg_catalog.pg_roles g ON g.oid = e.grantee),
           CASE WHEN d.defaclnamespace <> 0 THEN '' ELSE pg_catalog.format('; ALTER DEFAULT PRIVILEGES FOR ROLE %I GRANT ALL ON %s TO %I%s',
               r.rolname, o.word, r.rolname, CASE WHEN d.defaclobjtype IN ('f', 'T') THEN ', PUBLIC' ELSE '' END) END)
FROM pg_catalog.pg_default_acl d JOIN pg_catalog.pg_roles r ON r.oid = d.defaclrole
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace
JOIN (VALUES ('r', 'TABLES'), ('S', 'SEQUENCES'), ('f', 'FUNCTIONS'), ('T', 'TYPES'), ('n', 'SCHEMAS')) o(objtype, word)
  ON o.objtype = d.defaclobjtype::text
UNION ALL
-- Sequences and indexes after the tables: an identity column's sequence, a constraint's index, go with
-- their table and cannot go first.
SELECT CASE WHEN c.relkind IN ('S', 'i', 'I') THEN 7 ELSE 6 END,
       pg_catalog.format('DROP %s IF EXISTS public.%I CASCADE', CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
           WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'c' THEN 'TYPE' WHEN 'i' THEN 'INDEX' WHEN 'I' THEN 'INDEX'
           ELSE 'TABLE' END, c.relname)
FROM pg_catalog.pg_class c WHERE c.relnamespace = (SELECT oid FROM public)
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND m.objid = c.oid
                  AND m.deptype = 'e')
UNION ALL
SELECT 8, pg_catalog.format('DROP %s IF EXISTS %s CASCADE', CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE'
           ELSE 'FUNCTION' END, p.oid::pg_catalog.regprocedure)
FROM pg_catalog.pg_proc p WHERE p.pronamespace = (SELECT oid FROM public)
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND m.objid = p.oid)
UNION ALL
SELECT 9, pg_catalog.format('DROP %s IF EXISTS public.%I CASCADE', CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, t.typname)
FROM pg_catalog.pg_type t WHERE t.typnamespace = (SELECT oid FROM public) AND t.typtype IN ('e', 'd', 'r', 'b', 'p')
  AND t.typrelid = 0
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND m.objid = t.oid)
UNION ALL
SELECT 10, pg_catalog.format('DROP OPERATOR IF EXISTS public.%s(%s, %s) CASCADE', o.oprname,
           CASE WHEN o.oprleft = 0 THEN 'NONE' ELSE pg_catalog.format_type(o.oprleft, NULL) END,
           CASE WHEN o.oprright = 0 THEN 'NONE' ELSE pg_catalog.format_type(o.oprright, NULL) END)
FROM pg_catalog.pg_operator o WHERE o.oprnamespace = (SELECT oid FROM public)
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND m.objid = o.oid)
UNION ALL
SELECT 11, pg_catalog.format('DROP OPERATOR CLASS IF EXISTS public.%I USING %I CASCADE', c.opcname, a.amname)
FROM pg_catalog.pg_opclass c JOIN pg_catalog.pg_am a ON a.oid = c.opcmethod WHERE c.opcnamespace = (SELECT oid FROM public)
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_opclass'::pg_catalog.regclass AND m.objid = c.oid)
UNION ALL
SELECT 12, pg_catalog.format('DROP OPERATOR FAMILY IF EXISTS public.%I USING %I CASCADE', f.opfname, a.amname)
FROM pg_catalog.pg_opfamily f JOIN pg_catalog.pg_am a ON a.oid = f.opfmethod WHERE f.opfnamespace = (SELECT oid FROM public)
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_opfamily'::pg_catalog.regclass AND m.objid = f.oid)
UNION ALL
SELECT 13, pg_catalog.format('DROP CAST IF EXISTS (%s AS %s) CASCADE', pg_catalog.format_type(c.castsource, NULL),
           pg_catalog.format_type(c.casttarget, NULL))
FROM pg_catalog.pg_cast c WHERE c.oid >= 16384
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_cast'::pg_catalog.regclass AND m.objid = c.oid)
UNION ALL
SELECT 14, pg_catalog.format('DROP COLLATION IF EXISTS public.%I CASCADE', c.collname)
FROM pg_catalog.pg_collation c WHERE c.collnamespace = (SELECT oid FROM public)
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_collation'::pg_catalog.regclass AND m.objid = c.oid)
UNION ALL
SELECT 15, pg_catalog.format('DROP CONVERSION IF EXISTS public.%I', c.conname)
FROM pg_catalog.pg_conversion c WHERE c.connamespace = (SELECT oid FROM public)
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_conversion'::pg_catalog.regclass AND m.objid = c.oid)
UNION ALL
SELECT 16, pg_catalog.format('DROP TEXT SEARCH CONFIGURATION IF EXISTS public.%I CASCADE', c.cfgname)
FROM pg_catalog.pg_ts_config c WHERE c.cfgnamespace = (SELECT oid FROM public)
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_ts_config'::pg_catalog.regclass AND m.objid = c.oid)
UNION ALL
SELECT 17, pg_catalog.format('DROP TEXT SEARCH DICTIONARY IF EXISTS public.%I CASCADE', d.dictname)
FROM pg_catalog.pg_ts_dict d WHERE d.dictnamespace = (SELECT oid FROM public)
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_ts_dict'::pg_catalog.regclass AND m.objid = d.oid)
UNION ALL
SELECT 18, pg_catalog.format('DROP TEXT SEARCH TEMPLATE IF EXISTS public.%I CASCADE', t.tmplname)
FROM pg_catalog.pg_ts_template t WHERE t.tmplnamespace = (SELECT oid FROM public)
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_ts_template'::pg_catalog.regclass AND m.objid = t.oid)
UNION ALL
SELECT 19, pg_catalog.format('DROP TEXT SEARCH PARSER IF EXISTS public.%I CASCADE', p.prsname)
FROM pg_catalog.pg_ts_parser p WHERE p.prsnamespace = (SELECT oid FROM public)
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_ts_parser'::pg_catalog.regclass AND m.objid = p.oid)
UNION ALL
SELECT 20, pg_catalog.format('DROP STATISTICS IF EXISTS public.%I', s.stxname)
FROM pg_catalog.pg_statistic_ext s WHERE s.stxnamespace = (SELECT oid FROM public)
UNION ALL
SELECT 21, pg_catalog.format('DROP SERVER IF EXISTS %I CASCADE', s.srvname) FROM pg_catalog.pg_foreign_server s
WHERE NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_foreign_server'::pg_catalog.regclass AND m.objid = s.oid)
UNION ALL
SELECT 22, pg_catalog.format('DROP FOREIGN DATA WRAPPER IF EXISTS %I CASCADE', w.fdwname) FROM pg_catalog.pg_foreign_data_wrapper w
WHERE NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_foreign_data_wrapper'::pg_catalog.regclass AND m.objid = w.oid)
UNION ALL
SELECT 23, pg_catalog.format('DROP ACCESS METHOD IF EXISTS %I CASCADE', a.amname) FROM pg_catalog.pg_am a WHERE a.oid >= 16384
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_am'::pg_catalog.regclass AND m.objid = a.oid)
UNION ALL
SELECT 24, pg_catalog.format('DROP LANGUAGE IF EXISTS %I CASCADE', l.lanname) FROM pg_catalog.pg_language l WHERE l.oid >= 16384
  AND NOT EXISTS (SELECT FROM members m WHERE m.classid = 'pg_catalog.pg_language'::pg_catalog.regclass AND m.objid = l.oid)
UNION ALL
SELECT 25, pg_catalog.format('SELECT pg_catalog.lo_unlink(%s)', l.oid) FROM pg_catalog.pg_largeobject_metadata l
"#
    };
}

/// How many objects a shadow database holds beyond an empty one's.
pub const SHADOW_OBJECTS: &str = concat!("SELECT count(*) FROM (", shadow_held!(), ") held");

/// Drops what a build made in a shadow database that was empty before it: the statements are all
/// worded first (under the catalog search path, so every name comes qualified), then run.
pub const EMPTY_SHADOW: &str = concat!(
    "DO $prestart$ DECLARE statements text[]; statement text; BEGIN\n",
    "PERFORM pg_catalog.set_config('search_path', 'pg_catalog', true);\n",
    "SELECT pg_catalog.array_agg(h.statement ORDER BY h.rank, h.statement) INTO statements FROM (",
    shadow_held!(),
    ") h;\n",
    "FOREACH statement IN ARRAY coalesce(statements, '{}') LOOP EXECUTE statement; END LOOP;\n",
    "END $prestart$;\n"
);
