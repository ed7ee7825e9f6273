//! Whether `pg_hba.conf` lets the compose containers log in, judged as the server would judge
//! their connection: from their network, not from the host (whose connection through the bridge
//! arrives from another address, which the narrow compose rule rightly leaves out).

use std::net::Ipv4Addr;

use sqlx::postgres::{PgConnection, PgSslMode};

/// The first rule that matches a container of the compose network, as PostgreSQL picks it.
pub enum Verdict {
    /// This role may not read `pg_hba_file_rules` (superusers only, unless granted).
    Unreadable,
    /// A line of the file does not parse: the server kept the rules it had when it last loaded
    /// one that did, which doctor cannot see. The line and its error.
    Broken(String),
    LetIn(String),
    Rejected(String),
    NoRule,
}

/// `pg_hba.conf` was changed after the server last read its configuration: the rules judged are
/// the file's, which the server does not use until a reload.
pub async fn edited_since_reload(conn: &mut PgConnection) -> bool {
    let newer: Result<Option<bool>, _> = sqlx::query_scalar(
        "SELECT (pg_catalog.pg_stat_file(pg_catalog.current_setting('hba_file'))).modification \
                > pg_catalog.pg_conf_load_time()",
    )
    .fetch_one(&mut *conn)
    .await;
    matches!(newer, Ok(Some(true)))
}

/// One line of `pg_hba_file_rules`.
struct Rule {
    line_number: i32,
    r#type: String,
    database: Vec<String>,
    user_name: Vec<String>,
    address: Option<String>,
    netmask: Option<String>,
    auth_method: String,
}

impl Rule {
    fn describe(&self) -> String {
        let address = match (&self.address, &self.netmask) {
            (Some(address), Some(mask)) => format!(
                "{address}/{}",
                mask.parse::<Ipv4Addr>().map_or_else(|_| mask.clone(), |m| u32::from(m).count_ones().to_string())
            ),
            (Some(address), None) => address.clone(),
            _ => String::new(),
        };
        format!(
            "line {} (`{} {} {} {address} {}`)",
            self.line_number,
            self.r#type,
            self.database.join(","),
            self.user_name.join(","),
            self.auth_method
        )
    }
}

/// Walks the rules in order for a container of `subnet` logging in as `user` to `database`, the
/// way the server does: the first line whose type, database, user and address match decides.
pub async fn containers_login(
    conn: &mut PgConnection,
    subnet: &str,
    user: &str,
    database: &str,
    ssl_mode: PgSslMode,
) -> Result<Verdict, sqlx::Error> {
    let server_tls: bool =
        sqlx::query_scalar("SELECT pg_catalog.current_setting('ssl')::bool").fetch_one(&mut *conn).await?;
    // What the containers' client does with the same settings: `prefer` asks for TLS first, `allow` last.
    let uses_tls = match ssl_mode {
        PgSslMode::Disable | PgSslMode::Allow => false,
        PgSslMode::Prefer => server_tls,
        _ => true,
    };
    let rules = match read_rules(conn).await? {
        Ok(rules) => rules,
        Err(verdict) => return Ok(verdict),
    };
    let groups = groups_of(conn, user).await?;
    let Some(container) = first_container_address(subnet) else { return Ok(Verdict::NoRule) };
    let matching = rules.iter().find(|rule| {
        let type_matches = match rule.r#type.as_str() {
            "host" | "hostnogssenc" => true,
            "hostssl" => uses_tls,
            "hostnossl" => !uses_tls,
            _ => false,
        };
        type_matches
            && rule.database.iter().any(|d| database_matches(d, database, user, &groups))
            && rule.user_name.iter().any(|u| user_matches(u, user, &groups))
            && address_matches(rule.address.as_deref(), rule.netmask.as_deref(), container)
    });
    Ok(match matching {
        None => Verdict::NoRule,
        Some(rule) if rule.auth_method == "reject" => Verdict::Rejected(rule.describe()),
        Some(rule) => Verdict::LetIn(rule.describe()),
    })
}

/// The address Docker gives the first container of `subnet` (the gateway takes the first);
/// `None` for a subnet too small to hold one.
fn first_container_address(subnet: &str) -> Option<Ipv4Addr> {
    let (network, prefix) = subnet.split_once('/')?;
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 30)?;
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    let base = u32::from(network.parse::<Ipv4Addr>().ok()?) & mask;
    base.checked_add(2).map(Ipv4Addr::from)
}

fn database_matches(entry: &str, database: &str, user: &str, groups: &[String]) -> bool {
    match entry {
        "all" => true,
        "sameuser" => database == user,
        "samerole" | "samegroup" => database == user || groups.iter().any(|g| g == database),
        "replication" => false,
        name => name == database,
    }
}

fn user_matches(entry: &str, user: &str, groups: &[String]) -> bool {
    if entry == "all" {
        return true;
    }
    match entry.strip_prefix('+') {
        Some(group) => groups.iter().any(|g| g == group),
        None => entry == user,
    }
}

/// `samenet` counts: the compose network's bridge is on this machine while the stack runs.
/// A host name is not looked up (the server does a reverse lookup we cannot repeat here).
fn address_matches(address: Option<&str>, netmask: Option<&str>, container: Ipv4Addr) -> bool {
    match (address, netmask) {
        (Some("all" | "samenet"), _) => true,
        (Some(address), Some(mask)) => match (address.parse::<Ipv4Addr>(), mask.parse::<Ipv4Addr>()) {
            (Ok(address), Ok(mask)) => u32::from(address) & u32::from(mask) == u32::from(container) & u32::from(mask),
            _ => false,
        },
        _ => false,
    }
}

/// The rules of pg_hba.conf as the server loaded them; a verdict instead where they cannot be
/// read (it takes a superuser) or a line does not parse.
async fn read_rules(conn: &mut PgConnection) -> Result<Result<Vec<Rule>, Verdict>, sqlx::Error> {
    let broken: Result<Option<(Option<i32>, String)>, _> = sqlx::query_as(
        "SELECT line_number, error FROM pg_catalog.pg_hba_file_rules WHERE error IS NOT NULL ORDER BY line_number LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await;
    match broken {
        Err(error) if error.as_database_error().and_then(|e| e.code()).as_deref() == Some("42501") => {
            return Ok(Err(Verdict::Unreadable));
        }
        Err(error) => return Err(error),
        Ok(Some((line, error))) => {
            return Ok(Err(Verdict::Broken(format!(
                "line {}: {error}",
                line.map_or_else(|| "?".to_owned(), |l| l.to_string())
            ))));
        }
        Ok(None) => {}
    }
    type Row = (i32, String, Vec<String>, Vec<String>, Option<String>, Option<String>, String);
    let rules = sqlx::query_as::<_, Row>(
        "SELECT line_number, type, database, user_name, address, netmask, auth_method \
         FROM pg_catalog.pg_hba_file_rules",
    )
    .fetch_all(&mut *conn)
    .await;
    Ok(Ok(match rules {
        Ok(rows) => rows
            .into_iter()
            .map(|(line_number, r#type, database, user_name, address, netmask, auth_method)| Rule {
                line_number,
                r#type,
                database,
                user_name,
                address,
                netmask,
                auth_method,
            })
            .collect(),
        Err(error) if error.as_database_error().and_then(|e| e.code()).as_deref() == Some("42501") => {
            return Ok(Err(Verdict::Unreadable));
        }
        Err(error) => return Err(error),
    }))
}

/// The roles `user` is a member of, directly or not: `+group` entries match them.
async fn groups_of(conn: &mut PgConnection, user: &str) -> Result<Vec<String>, sqlx::Error> {
    // `+group` entries: the roles the user is a member of, directly or not, as the server's
    // matching counts them (pg_has_role would count every role for a superuser).
    sqlx::query_scalar(
        "WITH RECURSIVE member_of(oid) AS ( \
             SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1 \
             UNION SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN member_of ON m.member = member_of.oid) \
         SELECT r.rolname::text FROM pg_catalog.pg_roles r JOIN member_of USING (oid)",
    )
    .bind(user)
    .fetch_all(&mut *conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_match_as_the_server_masks_them() {
        let container = first_container_address("172.30.57.0/24").expect("address");
        assert_eq!(container, Ipv4Addr::new(172, 30, 57, 2));
        assert!(address_matches(Some("172.30.57.0"), Some("255.255.255.0"), container));
        assert!(address_matches(Some("172.16.0.0"), Some("255.240.0.0"), container));
        assert!(!address_matches(Some("172.17.0.0"), Some("255.255.0.0"), container));
        assert!(!address_matches(Some("::1"), Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), container));
        assert!(!address_matches(Some("samehost"), None, container));
        assert!(address_matches(Some("all"), None, container));
        // Host bits are masked off; a subnet too small for a container has none.
        assert_eq!(first_container_address("10.1.2.77/24"), Some(Ipv4Addr::new(10, 1, 2, 2)));
        assert_eq!(first_container_address("255.255.255.255/32"), None);
        assert_eq!(first_container_address("10.0.0.0/0"), Some(Ipv4Addr::new(0, 0, 0, 2)));
    }

    #[test]
    fn groups_and_keywords() {
        let groups = vec!["app".to_owned(), "staff".to_owned()];
        assert!(user_matches("+staff", "app", &groups));
        assert!(!user_matches("+admins", "app", &groups));
        assert!(database_matches("sameuser", "app", "app", &groups));
        assert!(!database_matches("replication", "app", "app", &groups));
        assert!(database_matches("samerole", "staff", "app", &groups));
    }
}
