//! A PostgreSQL server on the host, serving the compose containers through
//! `host.docker.internal`: where they arrive and the narrowest rule that lets them in.
//!
//! `host.docker.internal` is `host-gateway` in the compose file: the gateway address of Docker's
//! default bridge (172.17.0.1 unless the daemon says otherwise). The containers' packets arrive
//! there from the compose network, whose subnet the compose file pins (`COMPOSE_SUBNET`), so one
//! `pg_hba.conf` line names exactly the containers of this stack and nothing else on the LAN.

use std::net::Ipv4Addr;

use backend::config::Env;

/// The compose network's subnet when `.env` does not set `COMPOSE_SUBNET`; the same default as
/// in `docker-compose.yml` (a test keeps the two equal).
pub const DEFAULT_COMPOSE_SUBNET: &str = "172.30.57.0/24";

/// `COMPOSE_SUBNET` from `.env` or the environment, else the default; checked as `a.b.c.d/n`.
pub fn compose_subnet(env: &Env) -> Result<String, String> {
    let subnet = env.get("COMPOSE_SUBNET").unwrap_or(DEFAULT_COMPOSE_SUBNET).trim();
    let valid = subnet.split_once('/').is_some_and(|(address, prefix)| {
        address.parse::<Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 32)
    });
    if valid {
        Ok(subnet.to_owned())
    } else {
        Err("COMPOSE_SUBNET is not an IPv4 subnet: write it as 172.30.57.0/24".into())
    }
}

/// The address `host-gateway` stands for: the gateway of Docker's default bridge. `None` when
/// no Docker engine answers.
pub fn bridge_gateway() -> Option<String> {
    let sh = xshell::Shell::new().ok()?;
    let format = "{{range .IPAM.Config}}{{.Gateway}} {{.Subnet}}{{end}}";
    let config =
        xshell::cmd!(sh, "docker network inspect bridge --format {format}").quiet().ignore_stderr().read().ok()?;
    gateway_of(&config)
}

/// The gateway from `Gateway Subnet`. Docker 20.10 leaves `Gateway` out for the default bridge
/// unless `bip` sets it; the gateway is then the subnet's first address (172.17.0.1).
fn gateway_of(config: &str) -> Option<String> {
    let fields: Vec<&str> = config.split_whitespace().collect();
    match fields.as_slice() {
        [gateway, _subnet] => Some((*gateway).to_owned()),
        [subnet] => {
            let (network, _) = subnet.split_once('/')?;
            let network: Ipv4Addr = network.parse().ok()?;
            Some(Ipv4Addr::from(u32::from(network) + 1).to_string())
        }
        _ => None,
    }
}

/// The `pg_hba.conf` line that lets the compose containers in, and only them.
pub fn hba_rule(subnet: &str) -> String {
    format!("host all all {subnet} scram-sha-256")
}

/// Inside a container: the network this container is on (its directly connected route), which a
/// host server's `pg_hba.conf` must let in.
pub fn own_network() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    routes.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (destination, gateway, mask) = (fields.get(1)?, fields.get(2)?, fields.get(7)?);
        let hex = |field: &str| u32::from_str_radix(field, 16).ok().map(u32::swap_bytes);
        let (destination, mask) = (hex(destination)?, hex(mask)?);
        // The kernel writes these in the host's byte order, which is little-endian here.
        (*gateway == "00000000" && destination != 0 && cfg!(target_endian = "little"))
            .then(|| format!("{}/{}", Ipv4Addr::from(destination), mask.count_ones()))
    })
}

/// What to change on a host server that containers cannot reach: listen on the bridge address
/// too, let the compose network in, restart.
pub fn advice(subnet: &str) -> String {
    let bridge = bridge_gateway().unwrap_or_else(|| "172.17.0.1".into());
    format!(
        "for this workspace's cluster: cargo xtask dev-db start --serve-compose; for another server: \
         set listen_addresses = 'localhost,{bridge}' (Docker's bridge address) in postgresql.conf, add \
         `{}` (the compose network, COMPOSE_SUBNET) to pg_hba.conf, and restart PostgreSQL",
        hba_rule(subnet)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compose_file_pins_the_same_default_subnet() {
        let compose = std::fs::read_to_string(crate::base::workspace::root().join("docker-compose.yml"))
            .expect("docker-compose.yml");
        assert!(
            compose.contains(&format!("${{COMPOSE_SUBNET:-{DEFAULT_COMPOSE_SUBNET}}}")),
            "docker-compose.yml must default COMPOSE_SUBNET to {DEFAULT_COMPOSE_SUBNET}"
        );
    }

    #[test]
    fn the_bridge_gateway_is_given_or_the_first_address() {
        assert_eq!(gateway_of("192.168.5.1 192.168.5.0/24").as_deref(), Some("192.168.5.1"));
        assert_eq!(gateway_of(" 172.17.0.0/16").as_deref(), Some("172.17.0.1"));
        assert_eq!(gateway_of("").as_deref(), None);
    }

    #[test]
    fn a_subnet_is_checked() {
        let subnet = |value: &str| compose_subnet(&Env::from_pairs([("COMPOSE_SUBNET", value)]));
        assert_eq!(subnet("10.9.8.0/24").as_deref(), Ok("10.9.8.0/24"));
        assert_eq!(compose_subnet(&Env::from_pairs([])).as_deref(), Ok(DEFAULT_COMPOSE_SUBNET));
        for bad in ["10.9.8.0", "10.9.8.0/33", "all", "10.9.8/24", "10.9.8.0/24 trust"] {
            assert!(subnet(bad).is_err(), "{bad} accepted");
        }
    }
}
