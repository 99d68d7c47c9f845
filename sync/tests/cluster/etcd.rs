//! etcd for tests, with nothing but std: certificates from `openssl` and
//! the command line of a TLS member. Shared by vmshare-sync's own tests and
//! the core's fleet end-to-end test and benchmark (which drive etcd with
//! `etcdctl`), so both run the cluster the same way.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `name1=http://ip1:2380,…` for `--initial-cluster`.
pub fn initial_cluster(members: &[(&str, &str)]) -> String {
    members
        .iter()
        .map(|(name, ip)| format!("{name}=http://{ip}:{PEER_PORT}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The arguments of member `name` at `ip`: data in `root/NAME.etcd`, TLS
/// with client certificates from `root/certs` (`IP.pem`, `ca.pem`), peers
/// over plain HTTP on the same (private) addresses, short election timings.
pub fn member_args(root: &Path, initial: &str, name: &str, ip: &str) -> Vec<String> {
    let certs = root.join("certs");
    vec![
        format!("--name={name}"),
        format!("--data-dir={}", root.join(format!("{name}.etcd")).display()),
        format!("--listen-client-urls=https://{ip}:{CLIENT_PORT}"),
        format!("--advertise-client-urls=https://{ip}:{CLIENT_PORT}"),
        format!("--listen-peer-urls=http://{ip}:{PEER_PORT}"),
        format!("--initial-advertise-peer-urls=http://{ip}:{PEER_PORT}"),
        format!("--initial-cluster={initial}"),
        "--initial-cluster-state=new".into(),
        "--initial-cluster-token=vmshare-test".into(),
        format!("--cert-file={}", certs.join(format!("{ip}.pem")).display()),
        format!(
            "--key-file={}",
            certs.join(format!("{ip}-key.pem")).display()
        ),
        format!("--trusted-ca-file={}", certs.join("ca.pem").display()),
        "--client-cert-auth".into(),
        // Room for the oversized-document test (the core's limit is
        // 32 MiB; etcd's default request limit is 1.5 MiB).
        "--max-request-bytes=41943040".into(),
        "--heartbeat-interval=50".into(),
        "--election-timeout=500".into(),
        "--logger=zap".into(),
        "--log-level=warn".into(),
    ]
}

pub fn make_ca(dir: &Path) {
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=vmshare-test-ca"])
        .arg("-keyout")
        .arg(dir.join("ca-key.pem"))
        .arg("-out")
        .arg(dir.join("ca.pem")));
}

/// `name.pem` / `name-key.pem` signed by the CA: a server certificate for
/// IP `cn`, or a client certificate whose common name is the etcd user
/// (none when `cn` is empty: etcd's JSON gateway refuses a client
/// certificate with a common name, so its clients log in with a password).
pub fn make_cert(dir: &Path, name: &str, cn: &str, server: bool) {
    let subject = if cn.is_empty() {
        "/O=vmshare-test".to_string()
    } else {
        format!("/CN={cn}")
    };
    let ext = dir.join(format!("{name}.ext"));
    let text = if server {
        format!("subjectAltName=IP:{cn}\nextendedKeyUsage=serverAuth,clientAuth\n")
    } else {
        "extendedKeyUsage=clientAuth\n".to_string()
    };
    fs::write(&ext, text).unwrap();
    let csr = dir.join(format!("{name}.csr"));
    run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-subj", &subject])
        .arg("-keyout")
        .arg(dir.join(format!("{name}-key.pem")))
        .arg("-out")
        .arg(&csr));
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2"])
        // A serial from the (unique) name: no shared serial file, so
        // certificates can be signed in parallel.
        .arg("-set_serial")
        .arg(format!("0x{:x}", serial(name)))
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(dir.join("ca.pem"))
        .arg("-CAkey")
        .arg(dir.join("ca-key.pem"))
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(dir.join(format!("{name}.pem"))));
    fs::set_permissions(
        dir.join(format!("{name}-key.pem")),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

/// FNV-1a of `name`, as a positive certificate serial.
fn serial(name: &str) -> u64 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash >> 1) | 1
}
