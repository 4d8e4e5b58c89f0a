//! Each node's bot subnet, carved from the cluster's range (`cluster_subnet`) so no two nodes hand out
//! the same addresses: a node keeps the subnet it was given when it first joined (recorded in the
//! database, guarded there by a unique index), and a new node takes the first free one.

use std::net::Ipv4Addr;

use crate::error::{Error, Result};
use crate::store::Store;

/// Attempts at taking a free subnet when other nodes join at the same moment.
const ATTEMPTS: usize = 8;

/// The `index`th subnet of `/prefix` in `range` (`a.b.c.d/n`), if the range holds that many.
pub fn nth(range: &str, prefix: u8, index: u64) -> Option<String> {
    let (base, len) = parse(range)?;
    if prefix < len || prefix > 30 || index >= 1u64 << (prefix - len) {
        return None;
    }
    let start = u64::from(base) + (index << (32 - prefix));
    Some(format!("{}/{prefix}", Ipv4Addr::from(u32::try_from(start).ok()?)))
}

fn parse(cidr: &str) -> Option<(u32, u8)> {
    let (ip, len) = cidr.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 30)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some((u32::from(ip) & mask, len))
}

/// Whether `subnet` is one of `range`'s `/prefix` blocks.
fn within(range: &str, prefix: u8, subnet: &str) -> bool {
    let (Some((base, len)), Some((ip, l))) = (parse(range), parse(subnet)) else { return false };
    let aligned = subnet.split_once('/').and_then(|(a, _)| a.parse::<Ipv4Addr>().ok()) == Some(Ipv4Addr::from(ip));
    let range_mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    l == prefix && prefix >= len && aligned && ip & range_mask == base
}

/// The subnet of node `name`: the one it holds if it lies in `range`, else the first free block.
pub async fn claim(store: &Store, name: &str, range: &str, prefix: u8) -> Result<String> {
    for _ in 0..ATTEMPTS {
        let taken = store.node_subnets().await?;
        if let Some((_, mine)) = taken.iter().find(|(n, s)| n == name && !s.is_empty())
            && within(range, prefix, mine)
        {
            return Ok(mine.clone());
        }
        let free = (0..).map_while(|i| nth(range, prefix, i)).find(|s| !taken.iter().any(|(_, t)| t == s)).ok_or_else(
            || {
                Error::ResourceExhausted(format!(
                    "cluster_subnet {range} has no /{prefix} left for node `{name}` ({} nodes hold one)",
                    taken.iter().filter(|(_, s)| !s.is_empty()).count()
                ))
            },
        )?;
        if store.set_node_subnet(name, &free).await? {
            return Ok(free);
        }
    }
    Err(Error::Unavailable(format!("node `{name}` could not take a subnet: other nodes kept taking them first")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_carved_in_order_and_stop_at_the_end_of_the_range() {
        assert_eq!(nth("10.240.0.0/16", 24, 0).unwrap(), "10.240.0.0/24");
        assert_eq!(nth("10.240.0.0/16", 24, 1).unwrap(), "10.240.1.0/24");
        assert_eq!(nth("10.240.0.0/16", 24, 255).unwrap(), "10.240.255.0/24");
        assert_eq!(nth("10.240.0.0/16", 24, 256), None);
        assert_eq!(nth("10.240.7.9/16", 20, 1).unwrap(), "10.240.16.0/20", "host bits are ignored");
        assert_eq!(nth("10.240.0.0/16", 12, 0), None, "a block larger than the range");
        assert!(within("10.240.0.0/16", 24, "10.240.3.0/24"));
        assert!(!within("10.240.0.0/16", 24, "10.241.3.0/24") && !within("10.240.0.0/16", 24, "10.240.3.0/25"));
    }
}
