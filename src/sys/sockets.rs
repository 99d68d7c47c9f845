//! Who is at the other end of a local TCP connection: the kernel's socket
//! tables (/proc/net/tcp, tcp6) and the descriptors of every process. Used
//! to tell a login whose ssh client runs on this host, inside some session,
//! from a login from elsewhere.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One established TCP socket from /proc/net/tcp{,6}.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub inode: u64,
}

/// TCP_ESTABLISHED in the `st` column.
const ESTABLISHED: &str = "01";

/// Parses the text of /proc/net/tcp or /proc/net/tcp6: established sockets
/// only. Lines that do not parse are skipped.
pub fn parse_tcp_table(text: &str) -> Vec<TcpEntry> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            if fields.get(3) != Some(&ESTABLISHED) {
                return None;
            }
            Some(TcpEntry {
                local: parse_endpoint(fields.get(1)?)?,
                remote: parse_endpoint(fields.get(2)?)?,
                inode: fields.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// `0100007F:0016` (IPv4) or 32 hex digits and a port (IPv6): the address
/// is in 32-bit words of host byte order.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            // A v4 client of a v6 socket shows as ::ffff:a.b.c.d.
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Every established TCP socket of this network namespace.
pub fn tcp_sockets() -> Vec<TcpEntry> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .flat_map(|t| parse_tcp_table(&t))
        .collect()
}

/// The inodes of the sockets process `pid` holds open.
pub fn socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// For a connection this host accepted (`server`: the socket at our end),
/// the socket at the client's end when the client is on this host too.
pub fn local_peer<'a>(server: &TcpEntry, table: &'a [TcpEntry]) -> Option<&'a TcpEntry> {
    table
        .iter()
        .find(|e| e.local == server.remote && e.remote == server.local)
}

/// The pids of processes that hold socket `inode` open.
pub fn holders(inode: u64) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| socket_inodes(pid).contains(&inode))
        .collect()
}

/// The processes on this host at the client end of the TCP connection that
/// process `server_pid` (sshd's per-connection process) serves. Empty when
/// the client is elsewhere or cannot be found.
pub fn local_clients(server_pid: i32) -> Vec<i32> {
    let table = tcp_sockets();
    let mine = socket_inodes(server_pid);
    table
        .iter()
        .filter(|e| mine.contains(&e.inode))
        .filter_map(|server| local_peer(server, &table))
        .flat_map(|client| holders(client.inode))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1 0 100 0 0 10 0
   1: 0100007F:0016 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 200 1 0 20 4 30 10 -1
   2: 0100007F:A1B2 0100007F:0016 01 00000000:00000000 00:00000000 00000000  1000        0 300 1 0 20 4 30 10 -1
   3: garbage
";

    #[test]
    fn established_entries_parse() {
        let t = parse_tcp_table(TCP);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t[0].local, "127.0.0.1:22".parse().unwrap());
        assert_eq!(t[0].remote, "127.0.0.1:41394".parse().unwrap());
        assert_eq!(t[0].inode, 200);
        assert_eq!(local_peer(&t[0], &t).map(|e| e.inode), Some(300));
        assert_eq!(local_peer(&t[1], &t).map(|e| e.inode), Some(200));
    }

    #[test]
    fn ipv6_and_mapped_addresses_parse() {
        // ::1 port 22, and ::ffff:127.0.0.1 port 0xA1B2.
        let text = "header\n   0: 00000000000000000000000001000000:0016 0000000000000000FFFF00000100007F:A1B2 01 0:0 0:0 0 0 0 77 1\n";
        let t = parse_tcp_table(text);
        assert_eq!(t[0].local, "[::1]:22".parse().unwrap());
        assert_eq!(t[0].remote, "127.0.0.1:41394".parse().unwrap());
        assert_eq!(t[0].inode, 77);
    }

    #[test]
    fn this_process_finds_its_own_loopback_client() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        let me = std::process::id() as i32;
        // Our own process is both ends here: the client end's holder is us.
        let clients = local_clients(me);
        assert!(clients.contains(&me), "{clients:?}");
        drop(client);
    }
}
