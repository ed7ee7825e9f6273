//! What a migration's SQL does to the transaction sqlx runs it in, by squawk's parser rather than
//! by matching lines: `COMMIT; -- done`, `END;`, `commit and chain` and a one-line
//! `BEGIN; ...; COMMIT;` all end it, while `END;` inside a function body or a DO block does not.
//!
//! The answer decides what is safe: only a file whose every statement stays in sqlx's transaction
//! commits atomically with its row of the migrations table, so only such a file may be run again
//! after a failover cut it off, and only its commit may skip waiting for the disk (see
//! `one::Prefix`).

use squawk_syntax::{SourceFile, ast};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Every statement runs in the migration's transaction: the file and its row commit together,
    /// or neither does.
    Stays,
    /// A statement ends the transaction (COMMIT, END, COMMIT AND CHAIN, ROLLBACK, ABORT, PREPARE
    /// TRANSACTION): what comes before or after it is committed apart from the row.
    Ends,
    /// The parser cannot tell (a syntax error, or SQL it does not know): treated as if it might
    /// end the transaction, never as safe.
    Unknown,
}

/// What `sql`, one migration's SQL, does to its transaction.
pub fn transaction_control(sql: &str) -> Control {
    // The parser reads `'...'` as `standard_conforming_strings = on` does; where a database or
    // role keeps it off (a legacy one), a backslash in such a string ends it elsewhere, and a
    // COMMIT the parser took for text runs. A backslash anywhere makes the answer unknown.
    if sql.contains('\\') {
        return Control::Unknown;
    }
    let parse = SourceFile::parse(sql);
    if !parse.errors().is_empty() {
        return Control::Unknown;
    }
    let ends = parse.tree().stmts().any(|statement| match statement {
        ast::Stmt::Commit(_) | ast::Stmt::PrepareTransaction(_) => true,
        ast::Stmt::Rollback(rollback) => !matches!(rollback, ast::Rollback::RollbackToSavepoint(_)),
        _ => false,
    });
    if ends { Control::Ends } else { Control::Stays }
}

#[cfg(test)]
mod tests {
    use super::{Control, transaction_control};

    #[test]
    fn every_spelling_of_an_end_of_the_transaction_is_found() {
        for sql in [
            "BEGIN;\nINSERT INTO t VALUES (1);\nCOMMIT; -- done",
            "BEGIN; INSERT INTO t VALUES (1); COMMIT;",
            "insert into t values (1);\ncommit;",
            "INSERT INTO t VALUES (1);\nEND;",
            "INSERT INTO t VALUES (1);\nEND TRANSACTION;",
            "INSERT INTO t VALUES (1);\nCOMMIT AND CHAIN;\nINSERT INTO t VALUES (2);",
            "INSERT INTO t VALUES (1);\nROLLBACK;",
            "INSERT INTO t VALUES (1);\nABORT;",
            "INSERT INTO t VALUES (1);\n/* the end */ COMMIT WORK;",
            "PREPARE TRANSACTION 'x';",
        ] {
            assert_eq!(transaction_control(sql), Control::Ends, "{sql}");
        }
    }

    #[test]
    fn what_stays_in_the_transaction_is_told_apart() {
        for sql in [
            "",
            "-- only a comment\n",
            "CREATE TABLE t (id int);\nINSERT INTO t VALUES (1);",
            "SAVEPOINT a;\nINSERT INTO t VALUES (1);\nROLLBACK TO SAVEPOINT a;\nRELEASE SAVEPOINT a;",
            "DO $$\nBEGIN\n  INSERT INTO t VALUES (1);\nEND;\n$$;",
            "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$\nBEGIN\n  RETURN 1;\nEND;\n$body$;",
            "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$\nBEGIN\n  COMMIT;\nEND;\n$$;",
            "SELECT 'COMMIT;';\n-- COMMIT;\n/* END; */",
            "SET search_path TO app, public;",
        ] {
            assert_eq!(transaction_control(sql), Control::Stays, "{sql}");
        }
    }

    #[test]
    fn sql_the_parser_cannot_read_is_never_called_safe() {
        assert_eq!(transaction_control("CREATE TABLE (;"), Control::Unknown);
        // With standard_conforming_strings off, the COMMIT after this string runs.
        assert_eq!(transaction_control("SELECT 'a\\''; COMMIT; SELECT 1 -- '"), Control::Unknown);
    }
}
