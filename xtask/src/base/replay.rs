//! What a throwaway cluster may replay. A throwaway runs in a network namespace of its own where
//! the kernel allows one (as root, or in a user namespace as anyone else), so TCP reaches
//! nothing; but Unix sockets are files, and a network namespace does not hide them: a replayed
//! `dblink('host=/var/run/postgresql dbname=app')` would write into a live cluster on this machine.
//! So a migration that can reach another server, run a program or touch this machine's files is
//! never replayed: the work that needs the replay says so and stops, and the live server is not
//! touched. The words are read as written: SQL that builds such a name at run time (`EXECUTE
//! 'db' || 'link...'`) gets past them, and only the network namespace stands in its way.

use backend::migrations::MigrationFile;

/// What in `sql` can reach beyond the throwaway: the first such construct's name. A strict
/// over-approximation on words (comments and strings included): a false alarm costs a
/// comparison, a miss costs a live database.
pub fn reaches_out(sql: &str) -> Option<&'static str> {
    let lower = sql.to_ascii_lowercase();
    let words: Vec<&str> =
        lower.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).collect();
    let follows = |first: &str, second: &str| words.windows(2).any(|pair| pair[0] == first && pair[1] == second);
    if words.iter().any(|w| w.starts_with("dblink")) {
        return Some("dblink");
    }
    if words.iter().any(|w| w.starts_with("postgres_fdw")) {
        return Some("postgres_fdw");
    }
    if words.contains(&"subscription") {
        return Some("a subscription");
    }
    if follows("create", "server") || follows("foreign", "data") {
        return Some("a foreign server");
    }
    // Untrusted languages and C functions run what they like as the server's OS user; large
    // objects read and write this machine's files.
    const UNTRUSTED: [&str; 6] = ["plpython3u", "plpythonu", "plperlu", "pltclu", "plsh", "plr"];
    if let Some(language) = words.iter().find(|w| UNTRUSTED.contains(w)) {
        return Some(match *language {
            "plperlu" => "PL/PerlU",
            "pltclu" => "PL/TclU",
            "plsh" => "PL/sh",
            "plr" => "PL/R",
            _ => "PL/PythonU",
        });
    }
    if follows("language", "c") {
        return Some("a C function");
    }
    if words.iter().any(|w| matches!(*w, "lo_import" | "lo_export")) {
        return Some("a large object's file");
    }
    // COPY ... PROGRAM runs a program as the server's OS user, which may connect anywhere.
    let copies_a_program = lower.split(';').any(|statement| {
        let words: Vec<&str> =
            statement.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).collect();
        words.contains(&"copy") && words.contains(&"program")
    });
    copies_a_program.then_some("COPY ... PROGRAM")
}

/// Refuses a replay of `files` that could reach out: the reason, naming the file and the fix.
pub fn refuse_reaching_out<'a>(files: impl IntoIterator<Item = &'a MigrationFile>, work: &str) -> Result<(), String> {
    for file in files {
        if let Some(what) = reaches_out(file.migration.sql.as_str()) {
            return Err(format!(
                "{} uses {what}, which can reach another server from a throwaway cluster (a Unix socket on this \
                 machine is not hidden by a network namespace), so {work} does not replay the migrations; compare \
                 by hand, or give {work} an empty database of its own on a server that may be reached (--dev-url)",
                file.name()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::reaches_out;

    #[test]
    fn what_reaches_out_is_found_and_what_does_not_is_left() {
        for (sql, what) in [
            ("SELECT dblink_exec('host=/var/run/postgresql dbname=app', 'INSERT INTO hits VALUES (1)');", "dblink"),
            ("CREATE EXTENSION DBLINK;", "dblink"),
            ("CREATE EXTENSION postgres_fdw;", "postgres_fdw"),
            ("CREATE SUBSCRIPTION s CONNECTION 'dbname=app' PUBLICATION p;", "a subscription"),
            ("CREATE SERVER films FOREIGN DATA WRAPPER file_fdw;", "a foreign server"),
            ("COPY t FROM\n  PROGRAM 'psql -c \"DELETE FROM users\"';", "COPY ... PROGRAM"),
            ("CREATE EXTENSION plpython3u;", "PL/PythonU"),
            ("CREATE FUNCTION f() RETURNS int AS 'x.so', 'f' LANGUAGE C;", "a C function"),
            ("SELECT lo_export(1, '/tmp/x');", "a large object's file"),
        ] {
            assert_eq!(reaches_out(sql), Some(what), "{sql}");
        }
        for sql in ["CREATE TABLE servers (program text);", "COPY t FROM STDIN;", "SELECT 'a'; -- subscriptions"] {
            assert_eq!(reaches_out(sql), None, "{sql}");
        }
    }
}
