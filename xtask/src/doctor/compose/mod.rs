//! docker compose: the model the compose tool resolves (overrides, interpolation and profiles
//! count), and the checks that the prestart service gates backend and worker.

mod model;

use std::path::PathBuf;

use super::{Area, Doctor, Inputs, Outcome};
pub use model::{DOCKER_HOST_NAME, Model, Service};

/// What the checks of the compose file look at: the file as compose reads it, and its `prestart`
/// service.
struct ComposeFile<'a> {
    model: &'a Model,
    prestart: Option<&'a Service>,
}

type Check = fn(&ComposeFile<'_>) -> anyhow::Result<Outcome>;

/// The checks of the compose file, in the order of the report.
const CHECKS: &[(&str, Check)] = &[
    ("compose.file", file),
    ("compose.prestart_service", prestart_service),
    ("compose.backend_waits", backend_waits),
    ("compose.worker_waits", worker_waits),
    ("compose.same_image", same_image),
    ("compose.same_env_file", same_env_file),
    ("compose.extra_hosts", extra_hosts),
    ("compose.db_healthcheck", db_healthcheck),
];

pub fn run(doctor: &mut Doctor, inputs: &Inputs, model: &Result<Option<Model>, String>) {
    let model = match model {
        Ok(Some(model)) => model,
        Ok(None) => {
            doctor.check(Area::Compose, "compose.file", || {
                Ok(Outcome::skipped(format!("no compose file in {}", inputs.root.display())))
            });
            return;
        }
        Err(error) => {
            doctor.check(Area::Compose, "compose.file", || {
                Ok(Outcome::fail(
                    error.clone(),
                    "fix the compose file; `docker compose config` shows what compose reads",
                ))
            });
            return;
        }
    };
    let at = ComposeFile { model, prestart: model.services.get("prestart") };
    for (id, check) in CHECKS {
        doctor.check(Area::Compose, id, || check(&at));
    }
}

fn file(at: &ComposeFile<'_>) -> anyhow::Result<Outcome> {
    let ComposeFile { model, .. } = at;
    if let Some(rejected) = &model.rejected {
        return Ok(Outcome::fail(rejected.clone(), "fix the compose file; the checks below read it as written"));
    }
    Ok(Outcome::ok(match model.resolved_by {
        // Debian's docker-compose alone takes the README's commands spelt its way.
        Some(tool @ "docker-compose") => format!(
            "{} resolved by `{tool} config` ({} services); this machine has `docker-compose` and no compose \
             plugin: write `docker-compose ...` where the README says `docker compose ...`",
            model.file.display(),
            model.services.len()
        ),
        Some(tool) => {
            format!("{} resolved by `{tool} config` ({} services)", model.file.display(), model.services.len())
        }
        None => format!(
            "{} read as written: no compose tool installed ({} services)",
            model.file.display(),
            model.services.len()
        ),
    }))
}

fn prestart_service(at: &ComposeFile<'_>) -> anyhow::Result<Outcome> {
    let ComposeFile { prestart, .. } = at;
    Ok(match prestart {
        None => Outcome::fail(
            "no `prestart` service",
            "add a one-shot `prestart` service with the backend's image that runs `xtask prestart`",
        ),
        Some(service) if !service.command.contains("prestart") => Outcome::fail(
            format!("the `prestart` service runs `{}`, not the prestart task", service.command),
            "set its command to [\"/app/xtask\", \"prestart\"]",
        ),
        Some(service) if matches!(service.restart.as_deref(), Some("always" | "unless-stopped")) => Outcome::fail(
            format!("the `prestart` service has restart: {}", service.restart.as_deref().unwrap_or_default()),
            "a one-shot task must not restart: remove `restart` (or set restart: \"no\"), or compose runs it in a loop",
        ),
        Some(service) => Outcome::ok(format!("`prestart` runs `{}`", service.command)),
    })
}

fn same_image(at: &ComposeFile<'_>) -> anyhow::Result<Outcome> {
    let ComposeFile { model, prestart, .. } = at;
    let (Some(prestart), Some(backend)) = (prestart, model.services.get("backend")) else {
        return Ok(Outcome::skipped("needs both a prestart and a backend service"));
    };
    let same_image = prestart.image.is_some() && prestart.image == backend.image;
    let same_build = prestart.build.is_some() && prestart.build == backend.build;
    Ok(if same_image || same_build {
        Outcome::ok("prestart uses the backend's image, so it applies the migrations backend was built with")
    } else {
        Outcome::fail(
            format!("prestart uses {} but backend uses {}", describe_image(prestart), describe_image(backend)),
            "give prestart the backend's image (or build), so both agree on the migrations",
        )
    })
}

fn same_env_file(at: &ComposeFile<'_>) -> anyhow::Result<Outcome> {
    let ComposeFile { model, prestart, .. } = at;
    let (Some(prestart), Some(backend)) = (prestart, model.services.get("backend")) else {
        return Ok(Outcome::skipped("needs both a prestart and a backend service"));
    };
    Ok(if prestart.env_files == backend.env_files {
        Outcome::ok("prestart and backend read the same env_file")
    } else {
        Outcome::fail(
            format!("prestart reads {} but backend reads {}", files(&prestart.env_files), files(&backend.env_files)),
            "give both `env_file: .env`, so they connect to the same database",
        )
    })
}

fn extra_hosts(at: &ComposeFile<'_>) -> anyhow::Result<Outcome> {
    let ComposeFile { model, .. } = at;
    let missing: Vec<&str> = model
        .services
        .iter()
        .filter(|(_, s)| s.database_host().as_deref() == Some(DOCKER_HOST_NAME) && !s.maps_docker_host())
        .map(|(name, _)| name.as_str())
        .collect();
    Ok(if missing.is_empty() {
        Outcome::ok(format!("every service of the compose file that uses {DOCKER_HOST_NAME} maps it (extra_hosts)"))
    } else {
        Outcome::fail(
            format!(
                "{} {} {DOCKER_HOST_NAME} without mapping it; on Linux the name does not resolve",
                missing.join(", "),
                if missing.len() == 1 { "uses" } else { "use" }
            ),
            format!("add extra_hosts: [\"{DOCKER_HOST_NAME}:host-gateway\"] to {}", missing.join(", ")),
        )
    })
}

fn db_healthcheck(at: &ComposeFile<'_>) -> anyhow::Result<Outcome> {
    let ComposeFile { model, .. } = at;
    let postgres: Vec<(&String, &Service)> =
        model.services.iter().filter(|(_, s)| s.image.as_deref().is_some_and(|i| i.contains("postgres"))).collect();
    if postgres.is_empty() {
        return Ok(Outcome::skipped("no postgres service"));
    }
    let socket_only: Vec<&str> = postgres
        .iter()
        .filter(|(_, s)| s.healthcheck.as_deref().is_some_and(|t| t.contains("pg_isready") && !t.contains("-h")))
        .map(|(name, _)| name.as_str())
        .collect();
    Ok(if socket_only.is_empty() {
        Outcome::ok("postgres healthchecks go over TCP (or there are none)")
    } else {
        Outcome::fail(
            format!(
                "the healthcheck of {} runs pg_isready over the Unix socket, which answers during the image's init phase",
                socket_only.join(", ")
            ),
            "check over TCP: pg_isready -h 127.0.0.1 -U \"$POSTGRES_USER\" -d \"$POSTGRES_DB\"",
        )
    })
}

/// `name` starts only after prestart exits 0.
fn waits_for_prestart(at: &ComposeFile<'_>, name: &str) -> anyhow::Result<Outcome> {
    let model = at.model;
    let Some(service) = model.services.get(name) else {
        return Ok(Outcome::skipped(format!("no `{name}` service")));
    };
    Ok(match service.depends_on.get("prestart").map(String::as_str) {
        Some("service_completed_successfully") => Outcome::ok(format!("`{name}` starts only after prestart exits 0")),
        Some(other) => Outcome::fail(
            format!("`{name}` depends on prestart with condition {other}: it starts before the database is ready"),
            "use depends_on: { prestart: { condition: service_completed_successfully } }",
        ),
        None => Outcome::fail(
            format!("`{name}` does not depend on prestart: it may start on a database without its migrations"),
            "add depends_on: { prestart: { condition: service_completed_successfully } }",
        ),
    })
}

fn backend_waits(at: &ComposeFile<'_>) -> anyhow::Result<Outcome> {
    waits_for_prestart(at, "backend")
}

fn worker_waits(at: &ComposeFile<'_>) -> anyhow::Result<Outcome> {
    waits_for_prestart(at, "worker")
}

fn describe_image(service: &Service) -> String {
    match (&service.image, &service.build) {
        (Some(image), _) => format!("image {image}"),
        (None, Some(build)) => format!("a build of {build}"),
        (None, None) => "no image".into(),
    }
}

/// A service's env files as a reader would list them.
fn files(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "no env_file".to_owned();
    }
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}
