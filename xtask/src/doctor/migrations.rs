//! Migrations: the files, and the files against the database.

use backend::migrations::{MigrationSet, State, Status};
use sqlx::postgres::PgConnection;

use super::{Area, Doctor, Inputs, Outcome};
use crate::lint::Config;
use crate::lint::command::{lint_set, read_facts};
use crate::lint::rules::Severity;
use crate::migrate::{drop_invalid_indexes_fix, invalid_indexes};
use crate::schema::drift::Rehearsal;
use crate::workspace::display_path;

pub async fn run(doctor: &mut Doctor, inputs: &Inputs, conn: Option<PgConnection>) {
    let loaded = inputs.source.load(&inputs.root);
    let dir = inputs.source.dir(&inputs.root);
    doctor.check(Area::Migrations, "migrations.files", || {
        Ok(match &loaded {
            Ok((set, _, dir)) => {
                let ignored = ignored_files(dir);
                if ignored.is_empty() {
                    Outcome::ok(format!("{} migrations in {}/, versions unique", set.files.len(), display_path(dir)))
                } else {
                    Outcome::warn(
                        format!("sqlx ignores these files, whose names lack `<version>_<name>.sql`: {}", ignored.join(", ")),
                        "rename them (cargo xtask new-migration NAME makes a correct name), or move them out of the folder",
                    )
                }
            }
            Err(error) => {
                let message = format!("{error:#}");
                // The hint fits what failed: the settings, the folder, or the files in it.
                let hint = if backend::migrations::MigrationSettings::load(&inputs.root).is_err() {
                    "fix sqlx.toml: the [migrate] keys sqlx 0.9 reads (table-name, migrations-dir, ignored-chars, ...)"
                } else if !dir.is_dir() {
                    "pass --source DIR, or create the folder (cargo xtask new-migration NAME creates it with a first file)"
                } else {
                    "fix the file names: <version>_<name>.sql, each version once"
                };
                Outcome::fail(message, hint)
            }
        })
    });

    doctor.check(Area::Migrations, "migrations.line_endings", || {
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Outcome::skipped("no migrations folder")) };
        let mut crlf = Vec::new();
        let mut bom = Vec::new();
        for entry in entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "sql")) {
            let bytes = std::fs::read(entry.path())?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if bytes.starts_with(b"\xEF\xBB\xBF") {
                bom.push(name.clone());
            }
            if bytes.windows(2).any(|w| w == b"\r\n") {
                crlf.push(name);
            }
        }
        Ok(if crlf.is_empty() && bom.is_empty() {
            Outcome::ok("no CRLF line endings or byte-order marks")
        } else {
            let mut found = Vec::new();
            if !crlf.is_empty() {
                found.push(format!("CRLF line endings in {}", crlf.join(", ")));
            }
            if !bom.is_empty() {
                found.push(format!("a byte-order mark in {}", bom.join(", ")));
            }
            Outcome::warn(
                format!("{}: the checksum differs from another checkout's", found.join("; ")),
                "store them with LF and no BOM (.gitattributes: `*.sql text eol=lf`), or set ignored-chars in sqlx.toml",
            )
        })
    });

    doctor.check(Area::Migrations, "migrations.reversible_pairs", || {
        let Ok((set, _, _)) = &loaded else { return Ok(Outcome::skipped("the migrations cannot be read")) };
        let pairing = set.pairing();
        let mut found = Vec::new();
        if !pairing.ups_without_down.is_empty() {
            found.push(format!(
                "`.up.sql` files without their down file, where revert stops: {} missing",
                pairing.ups_without_down.join(", ")
            ));
        }
        if !pairing.orphan_downs.is_empty() {
            found.push(format!(
                "down files with no migration of their version, which nothing runs: {}",
                pairing.orphan_downs.join(", ")
            ));
        }
        Ok(if found.is_empty() {
            Outcome::ok(match set.downs.len() {
                0 => "no reversible migrations".to_owned(),
                1 => "1 migration has its down file".to_owned(),
                n => format!("{n} migrations have their down files"),
            })
        } else {
            Outcome::warn(
                found.join("; "),
                "a down file is `<version>_<name>.down.sql` beside its migration, named `.up.sql` or `.sql`: add it \
                 beside an applied migration without renaming or editing that file",
            )
        })
    });

    doctor.check(Area::Migrations, "migrations.transactions", || {
        let Ok((set, _, _)) = &loaded else { return Ok(Outcome::skipped("the migrations cannot be read")) };
        // Statements the parser cannot read are the linter's to report, not this check's.
        let findings = lint_set(set, &Config::transactions_only(), None, |_| true, false).findings;
        Ok(if findings.is_empty() {
            Outcome::ok("every statement can run the way its file runs it (in a transaction or not)")
        } else {
            Outcome::fail(
                findings
                    .iter()
                    .map(|f| format!("{}:{}: {}", display_path(&f.file), f.line, f.message))
                    .collect::<Vec<_>>()
                    .join("; "),
                findings.first().map(|f| f.safe.clone()).unwrap_or_default(),
            )
        })
    });

    let ids = [
        "migrations.lint",
        "migrations.pending",
        "migrations.changed",
        "migrations.failed",
        "migrations.unknown",
        "migrations.out_of_order",
        "migrations.invalid_indexes",
        "migrations.lock",
        "migrations.environment",
        "migrations.drift",
        "migrations.rehearsal",
        "migrations.releases",
        "migrations.seed_rerun",
    ];
    let (Some(mut conn), Ok((set, settings, _))) = (conn, &loaded) else {
        for id in ids {
            doctor.check(Area::Migrations, id, || Ok(Outcome::skipped("needs the database and readable migrations")));
        }
        return;
    };
    let table = settings.table_name.clone();
    let applied = crate::lock::read_applied(&mut conn, &table, std::time::Instant::now() + TABLE_READ_BOUND).await;
    let status = match applied {
        Ok(Ok(rows)) => Status::compare(set, &rows),
        Err(locked) => {
            let message = format!("{locked:#}");
            for id in ids {
                doctor.check(Area::Migrations, id, || {
                    Ok(Outcome::fail(message.clone(), "prestart would wait for that session, and fail at its deadline"))
                });
            }
            return;
        }
        Ok(Err(error)) => {
            let message = format!("cannot read {table}: {}", backend::db::describe_error(&error));
            for id in ids {
                doctor.check(Area::Migrations, id, || {
                    Ok(Outcome::fail(
                        message.clone(),
                        format!(
                            "let the role read it (GRANT SELECT ON {table} TO ...), or check table-name in sqlx.toml"
                        ),
                    ))
                });
            }
            return;
        }
    };
    state_checks(doctor, set, &status);

    doctor
        .check_async(Area::Migrations, "migrations.lint", async {
            let pending: Vec<i64> = status.with_state(State::Pending).map(|e| e.version).collect();
            if pending.is_empty() {
                return Ok(Outcome::ok("no pending migration to lint"));
            }
            // The same engine, settings and database facts as lint-migrations (a .squawk.toml that
            // does not parse is lint-migrations' to report: doctor lints with the defaults then).
            let config = Config::load(&dir, &inputs.root).unwrap_or_else(|_| Config::defaults());
            let facts = read_facts(&mut conn).await.ok();
            let mut outcome =
                lint_set(set, &config, facts.as_ref(), |file| pending.contains(&file.migration.version), true);
            outcome.rank();
            // A note (a lock on an empty table) is harmless: it warns of nothing.
            let findings: Vec<_> = outcome.findings.iter().filter(|f| f.severity != Severity::Note).collect();
            Ok(if findings.is_empty() {
                Outcome::ok(format!("the {} pending migrations are safe for a live database", pending.len()))
            } else {
                Outcome::warn(
                    findings
                        .iter()
                        .map(|f| format!("{}:{}: {}", display_path(&f.file), f.line, f.rule))
                        .collect::<Vec<_>>()
                        .join(", "),
                    "see `cargo xtask lint-migrations` for why each hurts a live database and the safe way",
                )
            })
        })
        .await;

    doctor
        .check_async(Area::Migrations, "migrations.invalid_indexes", async {
            let invalid = invalid_indexes(&mut conn).await?;
            Ok(if invalid.is_empty() {
                Outcome::ok("no INVALID indexes")
            } else {
                Outcome::fail(
                    format!(
                        "INVALID indexes, left by an interrupted CREATE INDEX CONCURRENTLY: {}",
                        invalid.join(", ")
                    ),
                    drop_invalid_indexes_fix(&invalid),
                )
            })
        })
        .await;

    doctor
        .check_async(Area::Migrations, "migrations.lock", async {
            let database: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut conn).await?;
            let key = crate::lock::key(&database);
            let held = crate::lock::is_held(&mut conn, key).await?;
            Ok(if held {
                let holder = crate::lock::holder(&mut conn, key).await?;
                Outcome::warn(
                    format!("the migration lock is held by {holder}"),
                    "prestart waits for it (up to --migration-lock-timeout); if that session is stuck, end it: SELECT pg_terminate_backend(pid)",
                )
            } else {
                Outcome::ok("the migration lock is free")
            })
        })
        .await;

    doctor
        .check_async(Area::Migrations, "migrations.environment", async {
            // The record `database drop` asks, against these settings: a local .env that reaches
            // another environment's database (an exported DATABASE_URL) shows here first.
            let said = inputs.settings.as_ref().ok().and_then(|s| s.environment.clone());
            let recorded = backend::db::bounded(crate::environment::recorded(&mut conn, &settings.table_name)).await?;
            let table = crate::environment::table_for(&settings.table_name);
            Ok(match recorded {
                None => Outcome::ok(format!("no recorded environment yet ({table}): prestart and migrate write it")),
                Some(recorded) if recorded.environment == said => {
                    Outcome::ok(format!("the database records {}, as these settings say", recorded.describe()))
                }
                Some(recorded) => Outcome::warn(
                    format!(
                        "the database records {}, while these settings say {}",
                        recorded.describe(),
                        said.map_or_else(|| "no ENVIRONMENT".to_owned(), |e| format!("ENVIRONMENT={e}"))
                    ),
                    "these settings may reach another environment's database (a DATABASE_URL exported in this shell \
                     wins over .env): check where they point before running anything that changes it",
                ),
            })
        })
        .await;

    // What the drift check could not tell, for the rehearsal that shares its throwaway cluster.
    let mut rehearsal: Result<(Rehearsal, String), String> = Err("the drift check did not get that far".into());
    doctor
        .check_async(Area::Migrations, "migrations.drift", async {
            // Bounded like every check; the throwaway cluster is removed however this ends.
            // Built in a throwaway cluster on this machine: the server diagnosed is only read.
            let look = crate::schema::find_drift(&mut conn, set, settings, crate::schema::Build::LocalCluster, true);
            let Ok(found) = tokio::time::timeout(DRIFT_CHECK_BOUND, look).await else {
                rehearsal = Err(format!(
                    "the throwaway copy of the schema took more than {} s to build",
                    DRIFT_CHECK_BOUND.as_secs()
                ));
                return Ok(Outcome::skipped(format!(
                    "the drift check took more than {} s: run `cargo xtask schema drift` to wait for it",
                    DRIFT_CHECK_BOUND.as_secs()
                )));
            };
            let mut found = found?;
            rehearsal = match &mut found {
                Ok(drift) => drift
                    .rehearsal
                    .take()
                    .map(|r| (r, drift.built_in.clone()))
                    .ok_or_else(|| "the drift check did not try them".to_owned()),
                Err(cannot) => Err(cannot.clone()),
            };
            Ok(match found {
                Err(cannot) => Outcome::skipped(cannot),
                Ok(drift) if drift.differences.is_empty() => Outcome::ok(format!(
                    "no drift: the schema is what the applied migrations produce (built in {})",
                    drift.built_in
                )),
                Ok(crate::schema::drift::Drift { differences, .. }) => Outcome::warn(
                    format!(
                        "the schema differs from what the applied migrations produce: {}",
                        differences.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
                    ),
                    "someone changed it by hand, or a migration was edited after it ran: undo the change, or put it in \
                     a new migration (cargo xtask new-migration NAME); `cargo xtask schema drift` lists it",
                ),
            })
        })
        .await;

    let rehearsed = doctor.check(Area::Migrations, "migrations.rehearsal", || {
        if status.with_state(State::Pending).next().is_none() {
            return Ok(Outcome::ok("no pending migration to try"));
        }
        Ok(match &rehearsal {
            Err(cannot) | Ok((Rehearsal::NotTried(cannot), _)) => {
                Outcome::skipped(format!("the pending migrations were not tried: {cannot}"))
            }
            Ok((Rehearsal::Ran(count), built_in)) => Outcome::ok(format!(
                "the {count} pending {} run, in order, on a throwaway copy of the schema ({built_in})",
                if *count == 1 { "migration" } else { "migrations" }
            )),
            Ok((Rehearsal::Failed { message, needs_this_machine: true }, built_in)) => Outcome::warn(
                format!(
                    "a pending migration fails on the throwaway copy of the schema ({built_in}) for want of what this \
                     machine's PostgreSQL lacks, which the server may have: {}",
                    one_line(message)
                ),
                "install it on this machine (the extension's package, say) for doctor to try the rest",
            ),
            Ok((Rehearsal::Failed { message, .. }, built_in)) => Outcome::fail(
                format!(
                    "a pending migration fails on a throwaway copy of the schema ({built_in}), so prestart would stop \
                     there: {}",
                    one_line(message)
                ),
                "fix that file (pending here; where another database applied it already, fix it in a new migration)",
            ),
        })
    });

    if rehearsed == super::Status::Fail {
        doctor.amend_hint(
            "migrations.pending",
            "prestart would apply them up to the one that fails on a throwaway copy (migrations.rehearsal) and stop \
             there: fix that file first"
                .to_owned(),
        );
    }
    let judged = super::releases::run(doctor, &mut conn, (set, settings), &status).await;
    if judged == super::Status::Fail {
        doctor.amend_hint(
            "migrations.pending",
            "prestart would refuse the one that breaks a query of the release before (migrations.releases), exit 6"
                .to_owned(),
        );
    }
    super::seed::run(doctor, inputs, set, settings).await;
}

/// A multi-line report (detail, hint) on the report's one line.
fn one_line(message: &str) -> String {
    message.lines().map(str::trim).collect::<Vec<_>>().join("; ")
}

/// How long doctor waits for the drift check (a throwaway database and the migrations in it).
const DRIFT_CHECK_BOUND: std::time::Duration = std::time::Duration::from_secs(30);

fn state_checks(doctor: &mut Doctor, set: &MigrationSet, status: &Status) {
    let versions =
        |state| status.with_state(state).map(|e| format!("{} {}", e.version, e.description)).collect::<Vec<_>>();
    let newest_applied = status
        .entries
        .iter()
        .filter(|e| matches!(e.state, State::Applied | State::Changed | State::Unknown))
        .map(|e| e.version)
        .max();

    doctor.check(Area::Migrations, "migrations.pending", || {
        let pending = versions(State::Pending);
        Ok(if pending.is_empty() {
            Outcome::ok(format!("all {} migrations are applied", set.files.len()))
        } else {
            Outcome::warn(
                format!("{} pending: {}", pending.len(), pending.join(", ")),
                "prestart applies them (cargo xtask prestart)",
            )
        })
    });
    doctor.check(Area::Migrations, "migrations.changed", || {
        let changed: Vec<String> = status.with_state(State::Changed).filter_map(|e| e.file.clone()).collect();
        Ok(if changed.is_empty() {
            Outcome::ok("no applied migration has changed since")
        } else {
            Outcome::fail(
                format!("changed since they were applied: {}", changed.join(", ")),
                "restore the applied version (git checkout) and put the change in a new migration (cargo xtask new-migration NAME)",
            )
        })
    });
    doctor.check(Area::Migrations, "migrations.failed", || {
        let failed = versions(State::Failed);
        Ok(if failed.is_empty() {
            Outcome::ok("no failed migration rows")
        } else {
            Outcome::fail(
                format!(
                    "recorded with success = false: {}; sqlx since 0.7 never writes such a row (a failed migration leaves \
                     none), so an older sqlx-cli, another tool or a hand-made INSERT left it, and sqlx refuses to migrate \
                     past it",
                    failed.join(", ")
                ),
                "check whether that migration's changes are in the schema, finish or undo them by hand, delete its row \
                 from the migrations table, and rerun prestart",
            )
        })
    });
    doctor.check(Area::Migrations, "migrations.unknown", || {
        let unknown = versions(State::Unknown);
        Ok(if unknown.is_empty() {
            Outcome::ok("the database has no migration this code lacks")
        } else {
            Outcome::warn(
                format!("applied but missing from the folder: {}", unknown.join(", ")),
                "a newer release ran against this database, or this is a rollback: deploy the code that has them",
            )
        })
    });
    doctor.check(Area::Migrations, "migrations.out_of_order", || {
        let Some(newest) = newest_applied else { return Ok(Outcome::ok("nothing applied yet")) };
        let older: Vec<String> = status
            .with_state(State::Pending)
            .filter(|e| e.version < newest)
            .map(|e| format!("{} {}", e.version, e.description))
            .collect();
        Ok(if older.is_empty() {
            Outcome::ok("no pending migration is older than the newest applied one")
        } else {
            Outcome::warn(
                format!("pending but older than the newest applied ({newest}): {}", older.join(", ")),
                "they were merged after newer ones ran; prestart applies them out of order: check they do not depend on later ones",
            )
        })
    });
}

/// `.sql` files that sqlx skips without a word: no `_` between version and name.
fn ignored_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sql") && !name.contains('_'))
        .collect()
}

/// How long doctor waits for a migrations table another session holds locked.
const TABLE_READ_BOUND: std::time::Duration = std::time::Duration::from_secs(5);
