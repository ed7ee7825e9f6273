//! doctor's `migrations.seed_rerun`: the seed (the first superuser, the default settings and the
//! SQL seed files) run twice on a throwaway migrated copy of the schema; a table its second run
//! changes fails the check, since every prestart runs it again.

use backend::migrations::{MigrationSet, MigrationSettings};

use super::{Area, Doctor, Inputs, Outcome};

pub async fn run(doctor: &mut Doctor, inputs: &Inputs, set: &MigrationSet, settings: &MigrationSettings) {
    doctor
        .check_async(Area::Migrations, "migrations.seed_rerun", async {
            let Some(superuser) = inputs.settings().and_then(|s| s.first_superuser.as_ref()) else {
                return Ok(Outcome::skipped("FIRST_SUPERUSER is not set: the seed cannot run"));
            };
            let files = crate::machinery::seed::SeedArgs::default().load(&inputs.root)?;
            let changed = crate::machinery::seed_check::rerun_changes(set, settings, superuser, &files).await?;
            Ok(match changed {
                Err(why) => Outcome::skipped(format!("the seed was not tried twice: {why}")),
                Ok(changed) if changed.is_empty() => Outcome::ok(format!(
                    "the seed's second run on a throwaway migrated copy changes nothing ({} SQL seed files)",
                    files.len()
                )),
                Ok(changed) => Outcome::fail(
                    format!(
                        "the seed's second run on a throwaway migrated copy changes {}: every prestart would again",
                        changed.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    ),
                    "insert only what is missing, by a key (INSERT ... ON CONFLICT (key) DO NOTHING); `cargo xtask \
                     seed --check` tries it",
                ),
            })
        })
        .await;
}
